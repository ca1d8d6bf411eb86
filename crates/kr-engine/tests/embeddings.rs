//! Embedding requests against transformers (issue 19, must-show 4): a tiny random Qwen3
//! (tests/reference/qwen3-tiny, made by scripts/make_qwen3_tiny.py) with Qwen3's real
//! tokenizer from the test models folder. The reference is Qwen3Model's final-normed
//! hidden state, pooled (last token, or mean) and L2-normalised, computed in f32 on the same
//! bf16 weights.
//!
//! Tolerance: 1e-4 absolute per component of the unit vector — both sides compute in f32
//! on the same weights; only the summation order differs.
//!
//! Also: the ids our tokenizer gives equal transformers'; chunked prefill, the prefix cache
//! and batching with generations leave the vectors unchanged.

mod common;

use common::test_models;
use kr_engine::{EngineConfig, EngineHandle, Event, GenerateRequest, Prompt, SamplingParams};
use serde_json::Value;
use std::path::{Path, PathBuf};

const TOLERANCE: f32 = 1e-4;

fn reference_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/reference/qwen3-tiny")
}

fn model_dir(tag: &str, pooling: Option<&str>) -> Option<PathBuf> {
    test_models::qwen3_tiny_dir(tag, pooling)
}

fn reference() -> Value {
    let text = std::fs::read_to_string(reference_dir().join("reference_embeddings.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn start(dir: &Path, f: impl FnOnce(&mut EngineConfig)) -> EngineHandle {
    let mut cfg = EngineConfig::new(dir);
    cfg.kv_cache_mib = 16;
    f(&mut cfg);
    kr_engine::start(cfg).expect("engine starts")
}

fn embed(engine: &EngineHandle, ids: Vec<u32>) -> Vec<f32> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(engine.embed(ids)).expect("an embedding").0
}

/// The largest component error of `engine`'s vectors against the reference's `key` vectors.
fn max_error(engine: &EngineHandle, key: &str) -> f32 {
    let mut worst = 0f32;
    for case in reference()["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids = engine.tokenize_prompt(&Prompt::Text(text.into())).unwrap();
        let want: Vec<u32> = floats(&case["input_ids"])
            .iter()
            .map(|&x| x as u32)
            .collect();
        assert_eq!(ids, want, "token ids of {text:?}");
        let ours = embed(engine, ids);
        let theirs = floats(&case[key]);
        assert_eq!(ours.len(), theirs.len());
        for (a, b) in ours.iter().zip(&theirs) {
            worst = worst.max((a - b).abs());
        }
    }
    println!("{key}: max |component error| = {worst:.2e}");
    worst
}

#[test]
fn last_token_embeddings_match_transformers() {
    let Some(dir) = model_dir("last", None) else {
        return;
    };
    let engine = start(&dir, |_| {});
    assert_eq!(engine.info().pooling, kr_engine::Pooling::Last);
    let err = max_error(&engine, "last");
    assert!(err <= TOLERANCE, "last-token pooling: {err}");
}

#[test]
fn mean_pooling_from_the_model_config_matches_transformers_in_chunks_and_from_the_cache() {
    let Some(dir) = model_dir("mean", Some("mean_tokens")) else {
        return;
    };
    // Prompts run in chunks of 8 tokens; the second pass finds every full block cached.
    let engine = start(&dir, |c| {
        c.max_num_batched_tokens = 8;
        c.block_size = 4;
    });
    assert_eq!(engine.info().pooling, kr_engine::Pooling::Mean);
    for pass in ["cold", "cached"] {
        let err = max_error(&engine, "mean");
        assert!(err <= TOLERANCE, "mean pooling ({pass}): {err}");
    }
    assert!(engine.stats().snapshot().prefix_hit_tokens > 0);
}

#[test]
fn embeddings_batched_with_generations_change_neither() {
    let Some(dir) = model_dir("mixed", None) else {
        return;
    };
    let engine = start(&dir, |_| {});
    let prompt = engine
        .tokenize_prompt(&Prompt::Text("The quick brown fox".into()))
        .unwrap();
    let greedy = SamplingParams {
        temperature: 0.0,
        max_tokens: 12,
        ignore_eos: true,
        ..SamplingParams::default()
    };
    let request = || GenerateRequest {
        prompt: Prompt::Tokens(prompt.clone()),
        params: greedy.clone(),
    };
    let alone = common::collect(&mut engine.submit(request()).unwrap());
    let alone_vec = embed(&engine, prompt.clone());
    // Now both at once, several times, so that steps mix them.
    let mut gens: Vec<_> = (0..3).map(|_| engine.submit(request()).unwrap()).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let vecs = rt.block_on(futures_join(&engine, &prompt, 3));
    for g in &mut gens {
        assert_eq!(common::collect(g).ids, alone.ids);
    }
    for v in vecs {
        let diff = v.iter().zip(&alone_vec).map(|(a, b)| (a - b).abs());
        assert!(diff.fold(0f32, f32::max) <= 1e-5);
    }
}

async fn futures_join(engine: &EngineHandle, prompt: &[u32], n: usize) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    let streams: Vec<_> = (0..n)
        .map(|_| {
            let req = engine.validate(engine.embedding_draft(prompt.to_vec()), u32::MAX);
            engine.submit_validated(req.unwrap()).unwrap()
        })
        .collect();
    for mut s in streams {
        match s.next().await {
            Some(Event::Embedding { vector, usage }) => {
                assert_eq!(usage.prompt_tokens, prompt.len());
                assert_eq!(usage.completion_tokens, 0);
                out.push(vector);
            }
            other => panic!("expected an embedding, got {other:?}"),
        }
        assert!(s.next().await.is_none(), "one event per embedding request");
    }
    out
}

#[test]
fn an_input_longer_than_the_context_is_refused_by_name() {
    let Some(dir) = model_dir("long", None) else {
        return;
    };
    let engine = start(&dir, |c| c.max_model_len = Some(8));
    let err = engine
        .validate(engine.embedding_draft(vec![1; 8]), u32::MAX)
        .unwrap_err()
        .to_string();
    assert!(err.contains("8"), "{err}");
    assert_eq!(embed(&engine, vec![1; 7]).len(), 16);
}
