//! Engine behaviour on real SmolLM2 weights: batch invariance, seeded sampling, KV block
//! accounting after every way a request can end, stop strings, and clear errors.

mod common;

use common::*;
use kr_engine::{
    ChatMessage, EngineConfig, EngineError, Event, FinishReason, GenerateRequest, Prompt,
    SamplingParams,
};
use std::io::Write;

fn chat(q: &str) -> Prompt {
    Prompt::Chat(vec![ChatMessage::new("user", q)])
}

const QUESTIONS: [&str; 4] = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers.",
    "Why is the sky blue? Explain it in detail to a child who is curious about science.",
];

/// Submits all requests at once and collects every output.
fn batched(engine: &kr_engine::EngineHandle, reqs: Vec<(Prompt, SamplingParams)>) -> Vec<Output> {
    let mut streams: Vec<_> = reqs
        .into_iter()
        .map(|(prompt, params)| engine.submit(GenerateRequest { prompt, params }).unwrap())
        .collect();
    streams.iter_mut().map(collect).collect()
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[test]
fn greedy_and_seeded_outputs_are_identical_alone_and_batched() {
    let Some(_) = smollm2() else { return };
    let engine = start(|_| {});
    let greedy = SamplingParams::greedy(24);
    let seeded = |s| SamplingParams {
        temperature: 0.9,
        top_p: 0.95,
        seed: Some(s),
        max_tokens: 24,
        ..Default::default()
    };
    let alone: Vec<Output> = QUESTIONS
        .iter()
        .map(|q| generate(&engine, chat(q), greedy.clone()))
        .collect();
    let alone_seeded = generate(&engine, chat(QUESTIONS[1]), seeded(7));
    let mut reqs: Vec<_> = QUESTIONS
        .iter()
        .map(|q| (chat(q), greedy.clone()))
        .collect();
    reqs.push((chat(QUESTIONS[1]), seeded(7)));
    reqs.push((chat(QUESTIONS[1]), seeded(8)));
    let together = batched(&engine, reqs);
    for (a, b) in alone.iter().zip(&together) {
        assert_eq!(a, b);
    }
    assert_eq!(
        alone_seeded, together[4],
        "same seed, same text, whatever else runs"
    );
    assert_ne!(together[4].ids, together[5].ids, "different seeds differ");
    wait_for_blocks(&engine, 0);
}

/// A 1,000-token prompt prefilled in 128-token chunks, first alone and then submitted with
/// three short requests (their decode steps share the chunks' steps): the same greedy tokens,
/// and every block back afterwards. (Issue 18's server check on the GPU, on the CPU here.)
#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[test]
fn a_chunked_long_prompt_gives_the_same_tokens_beside_short_requests() {
    let Some(_) = smollm2() else { return };
    // The default step composition without the prefix cache, and the batch-invariant one
    // with it (the second run then starts from the first one's cached prefix, cut to a chunk
    // boundary).
    for invariant in [false, true] {
        long_prompt_beside_short_requests(start(|c: &mut EngineConfig| {
            c.max_num_batched_tokens = 128;
            c.enable_prefix_caching = invariant;
            c.batch_invariant = invariant;
        }));
    }
}

fn long_prompt_beside_short_requests(engine: kr_engine::EngineHandle) {
    let long: Vec<u32> = (0..1000u32).map(|i| 300 + (i * 7919) % 40_000).collect();
    let alone = generate(
        &engine,
        Prompt::Tokens(long.clone()),
        SamplingParams::greedy(24),
    );
    let mut reqs = vec![(Prompt::Tokens(long), SamplingParams::greedy(24))];
    reqs.extend(
        QUESTIONS[..3]
            .iter()
            .map(|q| (chat(q), SamplingParams::greedy(40))),
    );
    let together = batched(&engine, reqs);
    assert_eq!(alone, together[0]);
    assert_eq!(alone.ids.len(), 24);
    wait_for_blocks(&engine, 0);
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[test]
fn outputs_survive_preemption_and_every_block_returns() {
    let Some(_) = smollm2() else { return };
    let reference = start(|_| {});
    let want: Vec<Output> = QUESTIONS
        .iter()
        .map(|q| generate(&reference, chat(q), SamplingParams::greedy(40)))
        .collect();
    // 12 blocks of 16 tokens cannot hold four ~40-token prompts plus 40 new tokens each.
    let engine = start(|c: &mut EngineConfig| c.num_kv_blocks = Some(12));
    let got = batched(
        &engine,
        QUESTIONS
            .iter()
            .map(|q| (chat(q), SamplingParams::greedy(40)))
            .collect(),
    );
    assert_eq!(got, want);
    assert!(
        engine.stats().snapshot().preemptions > 0,
        "the pool must have forced preemption"
    );
    wait_for_blocks(&engine, 0);
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[test]
fn aborted_stopped_and_finished_requests_free_their_blocks() {
    let Some(_) = smollm2() else { return };
    let engine = start(|_| {});
    // Aborted mid-stream by dropping the stream.
    let mut s = engine
        .submit(GenerateRequest {
            prompt: chat(QUESTIONS[3]),
            params: SamplingParams {
                ignore_eos: true,
                ..SamplingParams::greedy(500)
            },
        })
        .unwrap();
    for _ in 0..3 {
        assert!(matches!(s.next_blocking(), Some(Event::Token { .. })));
    }
    assert!(engine.stats().snapshot().kv_blocks_used > 0);
    drop(s);
    wait_for_blocks(&engine, 0);
    assert_eq!(engine.stats().snapshot().requests_aborted, 1);
    // Stopped by a stop string that spans tokens; the stop string is not in the output.
    let out = generate(
        &engine,
        chat(QUESTIONS[0]),
        SamplingParams {
            stop: vec!["of Fr".into()],
            ..SamplingParams::greedy(20)
        },
    );
    assert_eq!(out.text, "The capital ");
    assert_eq!(out.finish, Some(FinishReason::Stop));
    // Finished by length.
    let out = generate(&engine, chat(QUESTIONS[3]), SamplingParams::greedy(5));
    assert_eq!((out.ids.len(), out.finish), (5, Some(FinishReason::Length)));
    wait_for_blocks(&engine, 0);
    // Each request arrived at an idle engine and started in the turn it arrived (S1).
    assert_eq!(engine.stats().snapshot().fast_path, 3);
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[test]
fn invalid_input_is_a_clear_error() {
    let Some(_) = smollm2() else { return };
    let engine = start(|_| {});
    let bad = SamplingParams {
        top_p: 1.5,
        ..Default::default()
    };
    let err = engine
        .submit(GenerateRequest {
            prompt: chat("hi"),
            params: bad,
        })
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("top_p") && err.contains("allowed"), "{err}");
    let err = engine
        .submit(GenerateRequest {
            prompt: Prompt::Tokens(vec![]),
            params: SamplingParams::greedy(1),
        })
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("prompt is empty"), "{err}");
    let err = engine
        .submit(GenerateRequest {
            prompt: Prompt::Tokens(vec![1 << 20]),
            params: SamplingParams::greedy(1),
        })
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("prompt") && err.contains("0..49152"), "{err}");
}

#[test]
fn missing_and_truncated_model_files_are_named() {
    let missing = std::path::Path::new("/nonexistent/model.gguf");
    let err = kr_engine::start(EngineConfig::new(missing))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("/nonexistent/model.gguf"), "{err}");
    let Some(smollm2) = smollm2() else { return };
    let bytes = std::fs::read(smollm2).unwrap();
    let dir = std::env::temp_dir().join(format!("kr-serve-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let truncated = dir.join("truncated.gguf");
    std::fs::File::create(&truncated)
        .unwrap()
        .write_all(&bytes[..bytes.len() / 2])
        .unwrap();
    let err = kr_engine::start(EngineConfig::new(&truncated))
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(matches!(err, EngineError::Model(_)));
    assert!(
        msg.contains("truncated.gguf") && msg.contains("tensor '"),
        "{msg}"
    );
    std::fs::write(&truncated, &bytes[..100]).unwrap();
    let msg = kr_engine::start(EngineConfig::new(&truncated))
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("truncated.gguf") && msg.contains("truncated"),
        "{msg}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
