//! Constrained decoding on SmolLM2's real vocabulary: token bytes as the grammar sees them,
//! masks that only admit what the grammar allows (followed with random logits, so every
//! path the mask leaves open may be taken), and compile errors naming the field.

mod common;

use common::*;
use kr_engine::{Constraint, ConstraintKind, GrammarCompiler};
use kr_model::gguf::GgufFile;
use kr_model::Tokenizer;
use rand::{Rng, SeedableRng};

fn tokenizer() -> Option<Tokenizer> {
    let path = smollm2()?;
    let f = GgufFile::open(&path).expect("opens");
    Some(Tokenizer::from_gguf(&f).expect("tokenizer"))
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[test]
fn token_bytes_spell_what_decoding_gives() {
    let Some(tok) = tokenizer() else { return };
    let ids = tok
        .encode("Hello world!\n  x = \"é\"", false)
        .expect("encodes");
    let bytes: Vec<u8> = ids
        .iter()
        .flat_map(|&i| tok.token_bytes(i).expect("in vocabulary").0)
        .collect();
    assert_eq!(
        String::from_utf8(bytes).unwrap(),
        "Hello world!\n  x = \"é\""
    );
    let im_end = tok.token_to_id("<|im_end|>").expect("chat marker");
    assert_eq!(
        tok.token_bytes(im_end),
        Some((b"<|im_end|>".to_vec(), true))
    );
}

/// Follows random logits through the mask for up to 300 tokens (or until end-of-sequence),
/// computing masks ahead for even seeds and on demand for odd ones, checking each step's
/// device bitmask against the host mask.
fn follow(c: &GrammarCompiler, kind: ConstraintKind, seed: u64, tok: &Tokenizer) -> String {
    let g = c
        .compile(&Constraint::new("response_format", kind))
        .expect("compiles");
    let mut g = g.start(seed % 2 == 0);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    for _ in 0..300 {
        let mut logits: Vec<f32> = (0..tok.vocab_size)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        // The device sampler's bitmask allows exactly what the host mask leaves finite.
        let allowed = g.allowed(logits.len());
        g.mask(&mut logits);
        for (i, l) in logits.iter().enumerate() {
            let bit = allowed[i / 32] >> (i % 32) & 1 == 1;
            assert_eq!(
                bit,
                l.is_finite(),
                "token {i}: bitmask and host mask differ"
            );
        }
        let t = (0..logits.len()).fold(0, |b, i| if logits[i] > logits[b] { i } else { b }) as u32;
        assert!(logits[t as usize].is_finite(), "the mask left nothing");
        if tok.eos_ids.contains(&t) {
            return tok.decode(&out).expect("decodes");
        }
        g.accept(t);
        out.push(t);
    }
    panic!("no end within 300 tokens: {:?}", tok.decode(&out));
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[test]
fn masks_admit_only_what_the_grammar_allows() {
    let Some(tok) = tokenizer() else { return };
    let c = GrammarCompiler::new(&tok, tok.vocab_size).expect("compiler");
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "kind": {"enum": ["a", "b"]},
            "n": {"type": "integer", "minimum": 1, "maximum": 9},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 2}
        },
        "required": ["kind", "n", "tags"]
    });
    for seed in 0..4 {
        let text = follow(&c, ConstraintKind::JsonSchema(schema.clone()), seed, &tok);
        let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        let o = v.as_object().expect("an object");
        assert_eq!(o.len(), 3, "only the listed properties: {text}");
        assert!(["a", "b"].contains(&o["kind"].as_str().unwrap()), "{text}");
        assert!((1..=9).contains(&o["n"].as_i64().unwrap()), "{text}");
        let tags = o["tags"].as_array().unwrap();
        assert!(
            tags.len() <= 2
                && tags
                    .iter()
                    .all(|t| t.as_str().unwrap().chars().count() <= 3),
            "{text}"
        );
    }
    let text = follow(
        &c,
        ConstraintKind::Regex("[0-9]{3}-[a-z]{2}".into()),
        9,
        &tok,
    );
    assert!(text.len() == 6 && text.as_bytes()[3] == b'-', "{text}");
    let text = follow(
        &c,
        ConstraintKind::Choice(vec!["yes".into(), "no".into()]),
        3,
        &tok,
    );
    assert!(text == "yes" || text == "no", "{text}");
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[test]
fn constructs_the_engine_cannot_compile_name_the_field() {
    let Some(tok) = tokenizer() else { return };
    let c = GrammarCompiler::new(&tok, tok.vocab_size).expect("compiler");
    let cases = [
        (
            ConstraintKind::JsonSchema(serde_json::json!({"not": {"type": "string"}})),
            "not",
        ),
        (ConstraintKind::Regex("(?=a)b".into()), "look"),
        (ConstraintKind::Lark("start: foo".into()), "foo"),
        (ConstraintKind::Choice(vec![]), "empty"),
    ];
    for (kind, what) in cases {
        let e = c
            .compile(&Constraint::new("structured_outputs", kind))
            .expect_err("must not compile")
            .to_string();
        assert!(
            e.starts_with("structured_outputs: ") && e.contains(what),
            "{e}"
        );
    }
}
