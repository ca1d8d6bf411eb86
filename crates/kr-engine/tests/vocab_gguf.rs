//! Tokenizer conformance with llama.cpp's own test vectors (vocab-gguf in the test models):
//! `X.gguf.inp` holds inputs, each followed by "\n__ggml_vocab_test__\n"; `X.gguf.out` the
//! ids llama.cpp's test-tokenizer-0 expects, one line per input. That test tokenises with
//! `add_special = false` (no BOS) and `parse_special = false`; the SentencePiece space
//! prefix is part of the expected ids.
//!
//! The Hugging Face tokenizer.json files in the test models must give the same ids as the
//! matching GGUF vocabulary on those inputs (encoded without a post-processor, so no BOS).

use kr_model::gguf::GgufFile;
use kr_model::Tokenizer;
use std::path::PathBuf;

#[path = "../../../tests/support/test_models.rs"]
mod test_models;

fn dir() -> PathBuf {
    test_models::file("vocab-gguf")
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

/// Fails listing every input whose ids differ from the expected ones.
fn assert_encodes(tok: &Tokenizer, cases: &[(String, Vec<u32>)], what: &str) {
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(text, want)| {
            let got = tok.encode(text, false).expect("encodes");
            (&got != want).then(|| format!("{text:?}\n   want {want:?}\n    got {got:?}"))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{what}: {} of {} inputs differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Checks vocab `name` against llama.cpp's vectors; `add_bos` is what llama.cpp does for a
/// file without `tokenizer.ggml.add_bos_token` (these files have none): SentencePiece and the
/// Llama 3 pre-tokenizer add BOS, other byte-level BPE vocabularies do not.
fn check(name: &str, add_bos: bool) {
    let Some(path) = test_models::path(&format!("vocab-gguf/ggml-vocab-{name}.gguf")) else {
        return;
    };
    let file = GgufFile::open(&path).expect("vocab GGUF opens");
    let tok = Tokenizer::from_gguf(&file).expect("tokenizer builds");
    assert_eq!(tok.add_bos, add_bos, "{name}: adds BOS");
    let cases = vectors(name);
    assert_encodes(&tok, &cases, name);
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

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[test]
fn gpt2() {
    check("gpt-2", false);
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[test]
fn llama_bpe() {
    check("llama-bpe", true);
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[test]
fn qwen2() {
    check("qwen2", false);
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[test]
fn llama_spm() {
    check("llama-spm", true);
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[test]
fn phi3() {
    check("phi-3", true);
}

/// Ids from `models/DIR/tokenizer.json` against the expected ids of vocab `name`.
fn check_json(dir_name: &str, name: &str) {
    let Some(path) = test_models::path(&format!("{dir_name}/tokenizer.json")) else {
        return;
    };
    let Some(_) = test_models::path(&format!("vocab-gguf/ggml-vocab-{name}.gguf.inp")) else {
        return;
    };
    let tok = Tokenizer::from_tokenizer_json(&path).expect("tokenizer.json loads");
    let cases = vectors(name);
    assert_encodes(
        &tok,
        &cases,
        &format!("{dir_name}/tokenizer.json vs {name}"),
    );
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[test]
fn llama3_tokenizer_json_equals_its_gguf_vocab() {
    check_json("tokenizer-llama3", "llama-bpe");
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[test]
fn qwen3_tokenizer_json_equals_the_qwen2_gguf_vocab() {
    check_json("tokenizer-qwen3", "qwen2");
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[test]
fn phi3_tokenizer_json_equals_its_gguf_vocab() {
    check_json("tokenizer-phi-3", "phi-3");
}
