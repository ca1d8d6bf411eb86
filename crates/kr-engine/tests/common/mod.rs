//! Shared helpers of the engine's end-to-end tests (real SmolLM2 weights from the test
//! models folder, see tests/support/test_models.rs).
#![allow(dead_code)]

#[path = "../../../../tests/support/test_models.rs"]
pub mod test_models;

use kr_engine::{
    EngineConfig, EngineHandle, Event, FinishReason, GenerateRequest, Prompt, SamplingParams,
};
use kr_model::{AttnMeta, SeqAttn};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The SmolLM2 GGUF, or `None` (and a `skipped: …` line) without the test models:
/// `let Some(_) = smollm2() else { return };` starts every test that needs it.
pub fn smollm2() -> Option<PathBuf> {
    test_models::path(test_models::SMOLLM2)
}

/// The SmolLM2 GGUF's path, unchecked (after [`smollm2`]).
pub fn smollm2_path() -> PathBuf {
    test_models::file(test_models::SMOLLM2)
}

pub fn start(f: impl FnOnce(&mut EngineConfig)) -> EngineHandle {
    let mut cfg = EngineConfig::new(smollm2_path());
    cfg.kv_cache_mib = 256;
    f(&mut cfg);
    kr_engine::start(cfg).expect("engine starts")
}

/// The collected output of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub ids: Vec<u32>,
    pub text: String,
    pub finish: Option<FinishReason>,
}

pub fn collect(stream: &mut kr_engine::RequestStream) -> Output {
    let mut out = Output {
        ids: vec![],
        text: String::new(),
        finish: None,
    };
    while let Some(ev) = stream.next_blocking() {
        match ev {
            Event::Token { id, text, .. } => {
                out.ids.push(id);
                out.text.push_str(&text);
            }
            Event::Finished { reason, .. } => out.finish = Some(reason),
            Event::Error(e) => panic!("request failed: {e}"),
            Event::Embedding { .. } => panic!("an embedding event in a generation"),
        }
    }
    out
}

pub fn generate(engine: &EngineHandle, prompt: Prompt, params: SamplingParams) -> Output {
    let mut s = engine
        .submit(GenerateRequest { prompt, params })
        .expect("submit");
    collect(&mut s)
}

/// Waits until the engine reports `used` KV blocks in use (the engine publishes after steps).
pub fn wait_for_blocks(engine: &EngineHandle, used: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.stats().snapshot().kv_blocks_used != used {
        assert!(
            Instant::now() < deadline,
            "KV blocks in use stuck at {}",
            engine.stats().snapshot().kv_blocks_used
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Logits at chosen positions of a prompt, computed by one forward pass of a CPU runner.
pub fn logits_at(model: &kr_engine::LoadedModel, prompt: &[u32], rows: &[usize]) -> Vec<Vec<f32>> {
    let bs = 16;
    let blocks = prompt.len().div_ceil(bs);
    let cfg = kr_engine::RunnerConfig {
        device: kr_engine::DeviceChoice::Cpu,
        dtype: kr_engine::DTypeChoice::Auto,
        kv_cache_dtype: kr_engine::KvCacheDtype::Auto,
        kv_cache_mib: 0,
        block_size: bs,
        num_kv_blocks: Some(blocks),
        max_num_batched_tokens: prompt.len(),
        max_num_seqs: 1,
        max_model_len: prompt.len(),
        gpu_memory_fraction: 0.9,
        cuda_graphs: false,
        batch_invariant: false,
    };
    let mut runner = kr_engine::Runner::place(&model.weights, &cfg).expect("a CPU runner");
    let table: Vec<u32> = (0..blocks as u32).collect();
    let meta = AttnMeta {
        positions: (0..prompt.len() as u32).collect(),
        slot_mapping: (0..prompt.len() as u32).collect(),
        seqs: vec![SeqAttn {
            q_start: 0,
            q_len: prompt.len(),
            ctx_len: prompt.len(),
            block_table: table,
        }],
        logit_rows: rows.to_vec(),
    };
    let vocab = model.config().vocab_size;
    runner
        .forward(prompt, &meta)
        .expect("a CPU forward pass")
        .chunks(vocab)
        .map(<[f32]>::to_vec)
        .collect()
}

/// A tiny Hugging Face model of tests/reference/hf-tiny (scripts/make_hf_tiny_models.py and
/// make_hf_tiny_families.py).
pub fn hf_tiny_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/reference/hf-tiny")
        .join(name)
}

/// The reference file of `name` (transformers' input ids and logits).
pub fn hf_tiny_reference(name: &str) -> serde_json::Value {
    let path = hf_tiny_dir(name).join("reference.json");
    serde_json::from_str(&std::fs::read_to_string(&path).expect("reference file"))
        .expect("reference JSON")
}

/// The input ids of a reference file.
pub fn reference_ids(r: &serde_json::Value) -> Vec<u32> {
    r["input_ids"]
        .as_array()
        .expect("input_ids")
        .iter()
        .map(|v| v.as_u64().expect("a token id") as u32)
        .collect()
}

/// The largest absolute difference between two logit tables (every position, every token).
pub fn max_abs_diff(ours: &[Vec<f32>], reference: &serde_json::Value) -> f32 {
    let reference = reference.as_array().expect("a list of logit rows");
    assert_eq!(ours.len(), reference.len(), "positions");
    let mut worst = 0f32;
    for (row, refrow) in ours.iter().zip(reference) {
        let refrow = refrow.as_array().expect("a logit row");
        assert_eq!(row.len(), refrow.len(), "vocab");
        for (a, b) in row.iter().zip(refrow) {
            worst = worst.max((a - b.as_f64().expect("a logit") as f32).abs());
        }
    }
    worst
}

/// `model`'s largest absolute logit error against the `key` table of `name`'s reference, at
/// every position of the reference's input.
pub fn reference_error(model: &kr_engine::LoadedModel, name: &str, key: &str) -> f32 {
    let r = hf_tiny_reference(name);
    let ids = reference_ids(&r);
    let ours = logits_at(model, &ids, &(0..ids.len()).collect::<Vec<_>>());
    max_abs_diff(&ours, &r[key])
}

/// Loads the tiny model `name` and returns its largest absolute logit error against the
/// reference's `key` table, at every position of the reference's input.
pub fn hf_tiny_error(name: &str, key: &str) -> f32 {
    let model = kr_engine::load_model(&hf_tiny_dir(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let worst = reference_error(&model, name, key);
    println!("{name} vs {key}: max |logit error| = {worst:.2e}");
    worst
}
