//! The binary as a user runs it: `kr-serve run` and `kr-serve bench engine`.

use std::process::Command;

#[path = "../../../tests/support/test_models.rs"]
mod test_models;

/// The SmolLM2 GGUF as an argument, or `None` (and a `skipped: …` line) without it.
fn smollm2() -> Option<String> {
    let p = test_models::path(test_models::SMOLLM2)?;
    Some(p.to_str().expect("a UTF-8 path").to_string())
}

fn kr_serve(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kr-serve"))
        .args(args)
        .output()
        .expect("binary runs")
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[test]
fn run_prints_the_answer_on_stdout_and_stats_on_stderr() {
    let Some(smollm2) = smollm2() else { return };
    let out = kr_serve(&[
        "run",
        "--model",
        &smollm2,
        "--prompt",
        "What is the capital of France?",
        "--temperature",
        "0",
        "--max-tokens",
        "20",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "The capital of France is Paris.\n"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("tokens/s"));
}

#[test]
fn bad_flags_and_files_give_a_message_and_a_hint() {
    let out = kr_serve(&["run", "--model", "/no/such/model.gguf", "--prompt", "hi"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("/no/such/model.gguf") && err.contains("hint:"),
        "{err}"
    );
    let Some(smollm2) = smollm2() else { return };
    let out = kr_serve(&[
        "run",
        "--model",
        &smollm2,
        "--prompt",
        "hi",
        "--temperature",
        "5",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        err.contains("temperature") && err.contains("0.0..=2.0"),
        "{err}"
    );
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[test]
fn bench_engine_writes_a_json_report() {
    let Some(smollm2) = smollm2() else { return };
    let path = std::env::temp_dir().join(format!("kr-bench-{}.json", std::process::id()));
    let out = kr_serve(&[
        "bench",
        "engine",
        "--model",
        &smollm2,
        "--batch-sizes",
        "1,2",
        "--gen-tokens",
        "4",
        "--prompt-tokens",
        "8",
        "--prefill-tokens",
        "16",
        "--repeat",
        "1",
        "--out",
        path.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(report["decode"].as_array().unwrap().len(), 2);
    assert!(report["prefill"]["tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(report["machine"]["cores"].as_u64().unwrap() >= 1);
    assert!(report["commit"].is_string());
}
