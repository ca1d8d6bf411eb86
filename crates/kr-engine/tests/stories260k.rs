//! The llama2.c format end to end: stories260K (from ../shared and built in) must print
//! exactly what llama2.c's `run stories260K.bin -z tok512.bin -t 0.0 -n 200` prints
//! (stories260K/SOURCE.txt in the test models, tests/support/test_models.rs). run.c's `-n` counts forward passes: from a
//! prompt of P tokens (BOS included) it samples `n - P + 1` tokens, so `-n 200` from BOS
//! alone is `max_tokens` 200 here.

use kr_engine::{EngineConfig, Event, FinishReason, GenerateRequest, Prompt, SamplingParams};
use std::path::PathBuf;

#[path = "../../../tests/support/test_models.rs"]
mod test_models;

const REFERENCE: &str = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.\nLily's mom said, \"Lily, let's go to the park.\" Lily was sad and didn't know what to do. She said, \"I want to play with your ball, but I can't find it.\"\nLily was sad and didn't know what to do. She said, \"I'm sorry, Lily. I didn't know what to do.\"\nLily didn't want to help her mom, so she";

/// Greedy text from `prompt` (raw), its finish reason and the prompt's token count.
fn greedy(model: PathBuf, prompt: &str, max_tokens: u32) -> (String, FinishReason, usize) {
    let mut cfg = EngineConfig::new(model);
    cfg.kv_cache_mib = 16;
    let engine = kr_engine::start(cfg).expect("engine starts");
    let mut s = engine
        .submit(GenerateRequest {
            prompt: Prompt::Text(prompt.into()),
            params: SamplingParams::greedy(max_tokens),
        })
        .expect("submit");
    let mut text = String::new();
    while let Some(ev) = s.next_blocking() {
        match ev {
            Event::Token { text: t, .. } => text.push_str(&t),
            Event::Finished { reason, usage } => return (text, reason, usage.prompt_tokens),
            Event::Error(e) => panic!("request failed: {e}"),
            Event::Embedding { .. } => panic!("an embedding event in a generation"),
        }
    }
    panic!("stream ended without Finished")
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[test]
fn llama2c_file_matches_llama2c_greedy_output_from_bos() {
    let Some(model) = test_models::path(test_models::STORIES260K) else {
        return;
    };
    let (text, reason, prompt_tokens) = greedy(model, "", 200);
    assert_eq!(prompt_tokens, 1, "an empty raw prompt is just BOS");
    assert_eq!(reason, FinishReason::Length);
    assert_eq!(text, REFERENCE);
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[test]
fn llama2c_file_continues_a_prompt_like_llama2c() {
    let Some(model) = test_models::path(test_models::STORIES260K) else {
        return;
    };
    // llama2.c `-i "Zoo" -n 60` prints the prompt too; we print only the continuation.
    let (text, _, prompt_tokens) = greedy(model, "Zoo", 60 - 4 + 1);
    assert_eq!(prompt_tokens, 4, "BOS, ▁, Z, oo");
    assert_eq!(
        format!("Zoo{text}"),
        "Zoo was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but she didn't want to play with"
    );
}

#[test]
fn builtin_model_prints_the_same_text() {
    let (text, _, _) = greedy(PathBuf::from(kr_engine::BUILTIN_MODEL), "", 200);
    assert_eq!(text, REFERENCE);
}
