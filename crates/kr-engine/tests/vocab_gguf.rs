//! Tokenizer conformance with llama.cpp's own test vectors (../shared/models/vocab-gguf):
//! `X.gguf.inp` holds inputs, each followed by "\n__ggml_vocab_test__\n"; `X.gguf.out` the
//! ids llama.cpp's test-tokenizer-0 expects, one line per input. That test tokenises with
//! `add_special = false` (no BOS) and `parse_special = false`; the SentencePiece space
//! prefix is part of the expected ids.

use kr_model::gguf::GgufFile;
use kr_model::Tokenizer;
use std::path::PathBuf;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models/vocab-gguf")
}

/// The (input, expected ids) pairs of one vocabulary.
fn vectors(name: &str) -> Vec<(String, Vec<u32>)> {
    let base = dir().join(format!("ggml-vocab-{name}.gguf"));
    let inp = std::fs::read_to_string(base.with_extension("gguf.inp")).expect("read .inp");
    let out = std::fs::read_to_string(base.with_extension("gguf.out")).expect("read .out");
    let mut inputs: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    assert_eq!(inputs.pop(), Some(""), "{name}.inp ends with the separator");
    let expected: Vec<Vec<u32>> = out
        .lines()
        .map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect())
        .collect();
    assert_eq!(
        inputs.len(),
        expected.len(),
        "{name}: .inp and .out disagree"
    );
    inputs
        .into_iter()
        .map(str::to_string)
        .zip(expected)
        .collect()
}

fn check(name: &str) {
    let path = dir().join(format!("ggml-vocab-{name}.gguf"));
    let file = GgufFile::open(&path).expect("vocab GGUF opens");
    let tok = Tokenizer::from_gguf(&file).expect("tokenizer builds");
    let cases = vectors(name);
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(text, want)| {
            let got = tok.encode(text, false).expect("encodes");
            (&got != want).then(|| format!("{text:?}\n   want {want:?}\n    got {got:?}"))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{name}: {} of {} inputs differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // Decoding gives the text back (SentencePiece: minus the space prefix it added).
    for (text, want) in &cases {
        let back = tok.decode(want).expect("decodes");
        let back = match tok.kind() {
            "spm" => back.strip_prefix(' ').map(str::to_string).unwrap_or(back),
            _ => back,
        };
        assert_eq!(&back, text, "{name}: decode of {want:?}");
    }
}

#[test]
fn gpt2() {
    check("gpt-2");
}

#[test]
fn llama_bpe() {
    check("llama-bpe");
}

#[test]
fn qwen2() {
    check("qwen2");
}

#[test]
fn llama_spm() {
    check("llama-spm");
}

#[test]
fn phi3() {
    check("phi-3");
}
