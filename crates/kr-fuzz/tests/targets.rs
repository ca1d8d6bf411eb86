//! The short property pass CI runs over every fuzz target: seeds from `corpus/<target>/`
//! with random byte flips, insertions and truncations, plus random bytes. A panic (or, for
//! `http`, a 5xx) fails the case; proptest then shrinks it to a minimal input, which
//! belongs in `regressions/` as a named test once fixed. The long runs use AFL++
//! (`src/bin/afl.rs`, docs/fuzzing.md).

use proptest::prelude::*;
use std::path::Path;

/// The seed files of `target`.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read(p).expect("a seed"))
        .collect()
}

/// A seed changed by `edits` (position, byte) overwrites and cut at `keep` (as a share).
fn mutate(
    seed: &[u8],
    edits: &[(usize, u8)],
    insert: Option<(usize, Vec<u8>)>,
    keep: f64,
) -> Vec<u8> {
    let mut v = seed.to_vec();
    for &(at, b) in edits {
        if !v.is_empty() {
            let i = at % v.len();
            v[i] = b;
        }
    }
    if let Some((at, bytes)) = insert {
        let i = at % (v.len() + 1);
        v.splice(i..i, bytes);
    }
    let n = ((v.len() as f64) * keep).ceil() as usize;
    v.truncate(n.min(v.len()));
    v
}

fn input(target: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let seeds = seeds(target);
    let n = seeds.len();
    let mutated = (
        0..n,
        prop::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        prop::option::of((any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))),
        prop_oneof![Just(1.0), 0.0..1.0f64],
    )
        .prop_map(move |(i, edits, insert, keep)| mutate(&seeds[i], &edits, insert, keep));
    prop_oneof![4 => mutated, 1 => prop::collection::vec(any::<u8>(), 0..256)]
}

fn run(target: &'static str, cases: u32) {
    let f = kr_fuzz::TARGETS
        .iter()
        .find(|(n, _)| *n == target)
        .map(|(_, f)| *f)
        .expect("a target");
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(data in input(target))| { f(&data); });
}

#[test]
fn gguf_files_never_panic() {
    run("gguf", 1000);
}

#[test]
fn safetensors_files_never_panic() {
    run("safetensors", 1000);
}

#[test]
fn llama2c_files_never_panic() {
    run("llama2c", 256);
}

#[test]
fn tokenizer_json_files_never_panic() {
    run("tokenizer_json", 1000);
}

#[test]
fn chat_templates_never_panic() {
    run("chat_template", 1000);
}

#[test]
fn http_requests_never_get_a_server_error() {
    run("http", 1000);
}
