//! Where the tests find the real models (SmolLM2, stories260K, tokenizers, vocab GGUFs):
//! `$KR_TEST_MODELS` if set (a relative path is taken from the repository root), else
//! `../shared/models` beside the checkout. `scripts/fetch-test-models.sh` downloads the same
//! files from their public sources.
//!
//! Included by every test crate that needs them:
//! `#[path = "../../../tests/support/test_models.rs"] mod test_models;`
//! and used as `let Some(model) = test_models::path(test_models::SMOLLM2) else { return };`:
//! without the file the test prints one `skipped: …` line on stderr and returns. Tests
//! whose first step is that check also carry
//! `#[cfg_attr(no_test_models, ignore = "…")]`: the crate's build.rs
//! (`models_cfg.rs`) sets that cfg when the models are absent, so `cargo test` reports
//! them as ignored rather than passed.
//! `.ci/run` requires the models, so CI never skips.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

/// The variable naming the models folder.
pub const VAR: &str = "KR_TEST_MODELS";
/// The script that downloads the models, from the repository root.
pub const SCRIPT: &str = "scripts/fetch-test-models.sh";

/// SmolLM2-135M-Instruct, GGUF Q4_1.
pub const SMOLLM2: &str = "smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf";
/// Karpathy's stories260K in llama2.c format (its tok512.bin beside it).
pub const STORIES260K: &str = "stories260K/stories260K.bin";

/// The repository root (two levels above the including crate's manifest).
pub fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// The models folder: `$KR_TEST_MODELS`, else `<repository root>/../shared/models`.
/// It may not exist.
pub fn dir() -> PathBuf {
    match std::env::var_os(VAR) {
        Some(d) if !d.is_empty() => repo_root().join(d),
        _ => {
            let root = repo_root();
            match root.parent() {
                Some(parent) => parent.join("shared/models"),
                None => root.join("../shared/models"),
            }
        }
    }
}

/// `rel` inside the models folder, whether or not it is there (for tests that already
/// checked with [`path`], or that need a path that does not exist).
pub fn file(rel: &str) -> PathBuf {
    exact_cpu_products();
    dir().join(rel)
}

/// Selects the CPU's exact f32 products (`KR_CPU_EXACT_MATMUL=1`, inherited by the servers
/// the tests spawn): the outputs these tests assert (transformers' greedy text, golden
/// answers) are those of the exact path. The 8-bit activation path, the CPU's default, moves
/// logits by a few hundredths, enough to flip a near tie in a 135M model's first token; it
/// has tests of its own (kr-cpu's bound test, kr-engine's `cpu_int8.rs`).
pub fn exact_cpu_products() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::env::set_var("KR_CPU_EXACT_MATMUL", "1"));
}

/// `rel` inside the models folder if it is there; otherwise prints one line on stderr (even
/// without `--nocapture`) naming the test, the missing path, the variable and the script,
/// and gives `None`:
/// `let Some(p) = test_models::path(test_models::SMOLLM2) else { return };`
pub fn path(rel: &str) -> Option<PathBuf> {
    let p = file(rel);
    if p.exists() {
        return Some(p);
    }
    let thread = std::thread::current();
    let test = thread
        .name()
        .filter(|n| *n != "main")
        .unwrap_or("this test");
    let line = format!(
        "skipped: {test} needs the test models ({} is missing); set {VAR}=/path/to/models or run {SCRIPT}\n",
        p.display()
    );
    // Straight to stderr, in one write: the test harness captures `eprintln!` of passing
    // tests, and other tests' lines must not break into this one.
    let _ = std::io::stderr().write_all(line.as_bytes());
    None
}

/// A tiny random Qwen3 model directory for Qwen3's real tokenizer: the weights of
/// tests/reference/qwen3-tiny (scripts/make_qwen3_tiny.py) linked beside the test models'
/// `tokenizer-qwen3` files in a fresh temporary directory named after `tag`; with
/// `pooling`, a sentence-transformers `1_Pooling/config.json` turning on
/// `pooling_mode_<pooling>`. `None` (the skip line printed) without the test models.
pub fn qwen3_tiny_dir(tag: &str, pooling: Option<&str>) -> Option<PathBuf> {
    let tok = path("tokenizer-qwen3/tokenizer.json")?;
    let weights = repo_root().join("tests/reference/qwen3-tiny");
    let dir = std::env::temp_dir().join(format!("kr-qwen3-tiny-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let link = |from: &Path, name: &str| {
        std::os::unix::fs::symlink(from, dir.join(name)).expect("a symlink in the temp dir")
    };
    link(&weights.join("config.json"), "config.json");
    link(&weights.join("model.safetensors"), "model.safetensors");
    link(&tok, "tokenizer.json");
    link(
        &tok.with_file_name("tokenizer_config.json"),
        "tokenizer_config.json",
    );
    if let Some(mode) = pooling {
        std::fs::create_dir_all(dir.join("1_Pooling")).expect("a directory");
        let cfg = format!("{{\"word_embedding_dimension\": 16, \"pooling_mode_{mode}\": true}}");
        std::fs::write(dir.join("1_Pooling/config.json"), cfg).expect("writes");
    }
    Some(dir)
}
