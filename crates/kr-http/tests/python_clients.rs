//! The official `openai` and `ollama` Python packages, unmodified, against the server.
//! Needs a Python with both installed: `$KR_PYTHON`, else the venv `.ci/run` creates at
//! `target/pyclients`; skipped (with a note) when neither is there.

mod common;
use common::*;
use kr_http::ServerConfig;
use std::path::PathBuf;
use std::process::Command;

fn python() -> Option<PathBuf> {
    let p = std::env::var_os("KR_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/pyclients/bin/python")
        });
    let ok = Command::new(&p)
        .args(["-c", "import openai, ollama"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(p)
}

/// Runs `tests/python/SCRIPT BASE MODEL` against a fresh server on SmolLM2.
fn run_script(script: &str) {
    run_script_with(script, &[], |_| {});
}

/// [`run_script`] with the engine configured by `f`.
fn run_script_with(script: &str, args: &[&str], f: impl FnOnce(&mut kr_engine::EngineConfig)) {
    let Some(_) = smollm2() else { return };
    run_script_on(script, MODEL, args, f);
}

/// Runs `tests/python/SCRIPT BASE MODEL ARGS…` against a fresh server whose engine `f`
/// configures (SmolLM2 unless it names another model).
fn run_script_on(
    script: &str,
    model: &str,
    args: &[&str],
    f: impl FnOnce(&mut kr_engine::EngineConfig),
) {
    let Some(py) = python() else {
        eprintln!("skipped: no Python with `openai` and `ollama` (set KR_PYTHON or run .ci/run)");
        return;
    };
    let server = spawn(engine(f), ServerConfig::default());
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let out = Command::new(py)
        .arg(script)
        .args([server.base.as_str(), model])
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    server.join().expect("server stops");
}

#[test]
fn official_python_clients_work_unmodified() {
    run_script("clients.py");
}

/// `parse(response_format=PydanticModel)` for ten schemas, streamed and not; `json_object`,
/// the `structured_outputs` extension, Ollama `format`, an uncompilable schema's 400.
#[test]
fn structured_outputs_through_the_official_clients() {
    run_script("structured.py");
}

/// Tool calls (`tool_choice` required and named, streamed and not, a round trip) on SmolLM2
/// with Qwen3's chat template (`--chat-template`), whose tool format is `<tool_call>` blocks.
#[test]
fn tool_calls_through_the_official_client() {
    let Some(config) = common::test_models::path("tokenizer-qwen3/tokenizer_config.json") else {
        return;
    };
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(config).expect("reads")).expect("JSON");
    let path = std::env::temp_dir().join(format!("kr-qwen3-template-{}.jinja", std::process::id()));
    std::fs::write(&path, cfg["chat_template"].as_str().expect("a template")).expect("writes");
    run_script_with("tools.py", &[], |c| {
        c.chat_template_file = Some(path.clone())
    });
    run_script_with("tool_formats.py", &["hermes"], |c| {
        c.chat_template_file = Some(path.clone())
    });
    std::fs::remove_file(&path).ok();
}

/// The same tool round trip on a tiny random Qwen3 made with transformers, with Qwen3's real
/// tokenizer and the chat template that comes with it (no `--chat-template`): random
/// weights, so only the grammar keeps `required` and named calls valid.
#[test]
fn tool_calls_on_a_tiny_qwen3_with_its_own_template() {
    let Some(dir) = common::test_models::qwen3_tiny_dir("tools", None) else {
        return;
    };
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a name")
        .to_string();
    run_script_on("tools.py", &name, &[], |c| c.model = dir.clone());
}

/// Hand-written replies in the Llama 3.1 JSON and Mistral formats (minimal templates in those
/// formats, tests/python/templates), parsed whole and streamed.
#[test]
fn tool_call_formats_parse_whole_and_streamed() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/templates");
    for (format, file) in [
        ("llama3", "llama3-json-tools.jinja"),
        ("mistral", "mistral-tools.jinja"),
    ] {
        let path = dir.join(file);
        run_script_with("tool_formats.py", &[format], |c| {
            c.chat_template_file = Some(path)
        });
    }
}

/// Llama 3.2's real chat template (tests/reference/llama3_2-template, the Llama 3.1/3.2 JSON
/// tool format) on SmolLM2 (`--chat-template`): `required` and named calls valid streamed and
/// not, a round trip with the call and its `ipython` result in the history (tools.py), and
/// hand-written replies with and without `<|python_tag|>` parsed whole and streamed
/// (tool_formats.py).
#[test]
fn tool_calls_with_the_llama3_2_template() {
    let cfg = common::test_models::repo_root()
        .join("tests/reference/llama3_2-template/tokenizer_config.json");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cfg).expect("reads")).expect("JSON");
    let path =
        std::env::temp_dir().join(format!("kr-llama3_2-template-{}.jinja", std::process::id()));
    std::fs::write(&path, cfg["chat_template"].as_str().expect("a template")).expect("writes");
    run_script_with("tools.py", &["llama3"], |c| {
        c.chat_template_file = Some(path.clone())
    });
    for format in ["llama3", "llama3-bare"] {
        run_script_with("tool_formats.py", &[format], |c| {
            c.chat_template_file = Some(path.clone())
        });
    }
    std::fs::remove_file(&path).ok();
}

/// `client.embeddings.create` (base64 and float, `dimensions`, token ids), Ollama's `embed`
/// and `embeddings`, against transformers' vectors, on the tiny random Qwen3.
#[test]
fn embeddings_through_the_official_clients() {
    let Some(dir) = common::test_models::qwen3_tiny_dir("clients", None) else {
        return;
    };
    let reference = common::test_models::repo_root()
        .join("tests/reference/qwen3-tiny/reference_embeddings.json");
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a name")
        .to_string();
    run_script_on(
        "embeddings.py",
        &name,
        &[reference.to_str().expect("a UTF-8 path")],
        |c| c.model = dir.clone(),
    );
}
