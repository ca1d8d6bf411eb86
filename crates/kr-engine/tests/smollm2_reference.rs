//! SmolLM2-135M-Instruct (GGUF Q4_1) against Hugging Face transformers on the same
//! dequantised weights: tokenizer ids, chat-template text, logits and greedy continuations.
//! Reference: tests/reference/smollm2_hf_reference.json, made by
//! scripts/make_reference_smollm2.py (transformers 5.23, float32).
//!
//! Tolerance: |logit - reference| <= 1e-3 absolute at every compared id (logits are O(10);
//! the two implementations sum in different orders in f32 over 30 layers; measured max
//! error 7e-5, printed by the test).

mod common;

use common::*;
use kr_engine::{load_model, ChatMessage, Prompt, SamplingParams};
use serde_json::Value;

const LOGIT_TOLERANCE: f32 = 1e-3;

fn reference() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/reference/smollm2_hf_reference.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("reference file"))
        .expect("reference JSON")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("float") as f32)
        .collect()
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[test]
fn greedy_chat_answers_paris() {
    let Some(_) = smollm2() else { return };
    let engine = start(|_| {});
    let out = generate(
        &engine,
        Prompt::Chat(vec![ChatMessage::new(
            "user",
            "What is the capital of France?",
        )]),
        SamplingParams::greedy(20),
    );
    assert_eq!(out.text, "The capital of France is Paris.");
    assert_eq!(out.ids, vec![504, 3575, 282, 4649, 314, 7042, 30, 2]);
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[test]
fn tokenizer_and_template_match_transformers() {
    let Some(path) = smollm2() else { return };
    let r = reference();
    let model = load_model(&path).unwrap();
    for case in r["tokenizer_cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            model.tokenizer.encode(text, false).unwrap(),
            ids(&case["ids"]),
            "encoding {text:?}"
        );
        assert_eq!(
            model.tokenizer.decode(&ids(&case["ids"])).unwrap(),
            case["decoded"]
                .as_str()
                .unwrap()
                .replace("<|im_start|>", "")
                .replace("<|im_end|>", ""),
            "decoding {text:?}"
        );
    }
    let template = model
        .chat_template
        .as_ref()
        .expect("SmolLM2 has a chat template");
    for p in r["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["kind"] == "chat")
    {
        let messages: Vec<ChatMessage> = serde_json::from_value(p["messages"].clone()).unwrap();
        let rendered = template.render(&messages, true).unwrap();
        assert_eq!(rendered, p["rendered"].as_str().unwrap());
        assert_eq!(
            model.tokenizer.encode(&rendered, false).unwrap(),
            ids(&p["input_ids"])
        );
    }
}

fn max_error(ours: &[f32], every: usize, reference: &[f32]) -> f32 {
    reference
        .iter()
        .enumerate()
        .map(|(i, r)| (ours[i * every] - r).abs())
        .fold(0.0, f32::max)
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[test]
fn logits_match_transformers_within_tolerance() {
    let Some(path) = smollm2() else { return };
    let r = reference();
    let model = load_model(&path).unwrap();
    let mut worst = 0f32;
    for p in r["prompts"].as_array().unwrap() {
        let prompt = ids(&p["input_ids"]);
        let lg = &p["logits"];
        let positions: Vec<usize> = lg["positions"]
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.parse().unwrap())
            .collect();
        let mut rows = positions.clone();
        rows.push(prompt.len() - 1);
        let ours = logits_at(&model, &prompt, &rows);
        let last = ours.last().unwrap();
        let err = max_error(last, 8, &floats(&lg["last_strided"]));
        assert!(err <= LOGIT_TOLERANCE, "last position: max error {err}");
        worst = worst.max(err);
        for (pos, row) in positions.iter().zip(&ours) {
            let err = max_error(row, 64, &floats(&lg["positions"][pos.to_string()]));
            assert!(err <= LOGIT_TOLERANCE, "position {pos}: max error {err}");
            worst = worst.max(err);
        }
        for top in lg["last_top20"].as_array().unwrap() {
            let id = top["id"].as_u64().unwrap() as usize;
            assert!(
                (last[id] - top["logit"].as_f64().unwrap() as f32).abs() <= LOGIT_TOLERANCE,
                "top-20 id {id}"
            );
        }
    }
    eprintln!("max |logit - transformers| over all compared ids: {worst:.5}");
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[test]
fn greedy_continuations_match_transformers() {
    let Some(_) = smollm2() else { return };
    let r = reference();
    let engine = start(|_| {});
    for p in r["prompts"].as_array().unwrap() {
        let prompt = ids(&p["input_ids"]);
        let want = ids(&p["greedy"]["generated_ids"]);
        let params = SamplingParams {
            stop_token_ids: vec![],
            ..SamplingParams::greedy(want.len() as u32)
        };
        let out = generate(&engine, Prompt::Tokens(prompt), params);
        assert_eq!(
            out.ids,
            want,
            "prompt {:?}",
            p.get("messages").or(p.get("text"))
        );
    }
}
