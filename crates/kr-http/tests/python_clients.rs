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
    let Some(py) = python() else {
        eprintln!("skipped: no Python with `openai` and `ollama` (set KR_PYTHON or run .ci/run)");
        return;
    };
    let Some(_) = smollm2() else { return };
    let server = spawn(engine(|_| {}), ServerConfig::default());
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let out = Command::new(py)
        .arg(script)
        .args([&server.base, MODEL])
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
