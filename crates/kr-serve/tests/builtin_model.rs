//! `kr-serve run` on llama2.c's stories260K, from the test models and built in (no `--model`):
//! stdout must be exactly llama2.c's `run -t 0.0 -n 200` text (stories260K/SOURCE.txt).
//! Also `kr-serve models inspect` on the built-in model, a GGUF file and a bad path.

use std::process::Command;

#[path = "../../../tests/support/test_models.rs"]
mod test_models;

const REFERENCE: &str = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.\nLily's mom said, \"Lily, let's go to the park.\" Lily was sad and didn't know what to do. She said, \"I want to play with your ball, but I can't find it.\"\nLily was sad and didn't know what to do. She said, \"I'm sorry, Lily. I didn't know what to do.\"\nLily didn't want to help her mom, so she";

fn run(model: Option<&str>) -> String {
    let mut args = vec![];
    if let Some(m) = model {
        args.extend(["--model", m]);
    }
    let out = Command::new(env!("CARGO_BIN_EXE_kr-serve"))
        .arg("run")
        .args(args)
        .args(["--raw", "--prompt", "", "--temperature", "0"])
        .args(["--max-tokens", "200"])
        .output()
        .expect("binary runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[test]
fn llama2c_file_prints_the_llama2c_reference() {
    let Some(stories) = test_models::path(test_models::STORIES260K) else {
        return;
    };
    let stories = stories.to_str().expect("a UTF-8 path");
    assert_eq!(run(Some(stories)), format!("{REFERENCE}\n"));
}

#[test]
fn builtin_default_prints_the_llama2c_reference() {
    assert_eq!(run(None), format!("{REFERENCE}\n"));
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[test]
fn a_llama2c_file_without_its_tokenizer_names_what_was_looked_for() {
    let Some(stories) = test_models::path(test_models::STORIES260K) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("kr-llama2c-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("m.bin");
    std::fs::copy(stories, &model).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kr-serve"))
        .args([
            "run",
            "--model",
            model.to_str().unwrap(),
            "--raw",
            "--prompt",
            "x",
        ])
        .output()
        .expect("binary runs");
    std::fs::remove_dir_all(&dir).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("m.bin") && err.contains("tok512.bin"), "{err}");
}

fn inspect(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kr-serve"))
        .args(["models", "inspect"])
        .args(args)
        .output()
        .expect("binary runs")
}

#[test]
fn models_inspect_describes_the_builtin_model() {
    let out = inspect(&["builtin:stories260K", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["format"], "llama2.c");
    // 64·512 embedding + 5 layers (2·64 norms, 2·64·64 + 2·32·64 attention, 3·64·172 FFN) + 64.
    assert_eq!(s["parameters"], 260_032);
    assert_eq!(s["config"]["num_kv_heads"], 4);
    assert_eq!(s["config"]["max_context"], 512);
    assert_eq!(s["tokenizer"]["kind"], "spm");
    assert_eq!(s["chat_template"], false);
    assert_eq!(s["problems"].as_array().unwrap().len(), 0);
}

#[test]
fn models_inspect_reads_a_gguf_header_and_names_bad_paths() {
    let out = inspect(&["/no/such/model.gguf"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/model.gguf"));
    let Some(gguf) = test_models::path(test_models::SMOLLM2) else {
        return;
    };
    let out = inspect(&[gguf.to_str().expect("a UTF-8 path")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "Q4_1 ×210",
        "Q8_0 ×1",
        "8192 tokens",
        "chat template  yes",
        "134.5 M",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
}

#[test]
fn models_inspect_reads_a_hugging_face_directory() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/reference/hf-tiny/qwen3-bf16"
    );
    let out = inspect(&[dir, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["format"], "huggingface");
    assert_eq!(s["config"]["architecture"], "qwen3");
    assert_eq!(s["chat_template"], true);
    assert_eq!(s["problems"].as_array().unwrap().len(), 0);
}
