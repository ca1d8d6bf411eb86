//! The engine on a GPU samples on the device (only token ids come back) whenever no request
//! of the step needs its logits on the host. Skipped (passes, prints "skipped") without a
//! usable GPU; on the GPU machine run the binary built here (`cargo test -p kr-engine --test
//! gpu_sampling --no-run`). Uses the tiny Hugging Face Llama in f32 from tests/reference.

mod common;

use common::{collect, generate, Output};
use kr_engine::{DTypeChoice, DeviceChoice, EngineConfig, EngineHandle, GenerateRequest};
use kr_engine::{Prompt, SamplingParams};
use std::path::PathBuf;

fn tiny_llama() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/reference/hf-tiny/llama-f32")
}

fn engine(device: DeviceChoice) -> EngineHandle {
    let mut cfg = EngineConfig::new(tiny_llama());
    cfg.device = device;
    cfg.dtype = DTypeChoice::F32;
    cfg.num_kv_blocks = Some(64);
    kr_engine::start(cfg).expect("engine starts")
}

fn prompt(i: u32) -> Prompt {
    Prompt::Tokens((1..20).map(|t| (t * 7 + i * 13) % 200 + 3).collect())
}

fn seeded(seed: u64) -> SamplingParams {
    SamplingParams {
        temperature: 0.9,
        top_k: 40,
        top_p: 0.95,
        min_p: 0.01,
        seed: Some(seed),
        max_tokens: 16,
        ignore_eos: true,
        ..Default::default()
    }
}

fn greedy() -> SamplingParams {
    SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(16)
    }
}

/// Runs every request at once (one batch) and collects the outputs in order.
fn together(engine: &EngineHandle, reqs: Vec<(Prompt, SamplingParams)>) -> Vec<Output> {
    let mut streams: Vec<_> = reqs
        .into_iter()
        .map(|(prompt, params)| {
            engine
                .submit(GenerateRequest { prompt, params })
                .expect("submit")
        })
        .collect();
    streams.iter_mut().map(collect).collect()
}

#[test]
fn gpu_engine_samples_on_the_device_and_stays_reproducible() {
    if let Err(e) = kr_cuda::probe(0) {
        eprintln!("skipped: {e}");
        return;
    }
    let gpu = engine(DeviceChoice::Cuda(0));
    let cpu = engine(DeviceChoice::Cpu);
    // Greedy on the device equals greedy on the CPU (f32 logits agree to ~1e-5).
    for i in 0..3 {
        assert_eq!(
            generate(&gpu, prompt(i), greedy()).ids,
            generate(&cpu, prompt(i), greedy()).ids,
            "greedy, prompt {i}"
        );
    }
    let before = gpu.stats().snapshot().device_sampled_tokens;
    assert!(
        before >= 48,
        "greedy tokens were not sampled on the device: {before}"
    );
    // Seeded sampling: the same seed gives the same tokens alone and batched; seeds differ.
    let alone = generate(&gpu, prompt(1), seeded(7));
    let batch = together(
        &gpu,
        vec![
            (prompt(0), greedy()),
            (prompt(1), seeded(7)),
            (prompt(1), seeded(8)),
        ],
    );
    assert_eq!(
        alone.ids, batch[1].ids,
        "same seed, same tokens, whatever else runs"
    );
    assert_ne!(batch[1].ids, batch[2].ids, "different seeds differ");
    assert_eq!(batch[0].ids, generate(&cpu, prompt(0), greedy()).ids);
    let sampled = gpu.stats().snapshot().device_sampled_tokens - before;
    assert_eq!(
        sampled,
        4 * 16,
        "every token of those four requests came from the device"
    );
    // A request that wants logprobs takes the host path; its tokens are not counted.
    let with_logprobs = SamplingParams {
        logprobs: Some(2),
        ..greedy()
    };
    let host = generate(&gpu, prompt(2), with_logprobs);
    assert_eq!(host.ids, generate(&cpu, prompt(2), greedy()).ids);
    assert_eq!(
        gpu.stats().snapshot().device_sampled_tokens - before,
        4 * 16,
        "a logprobs request was sampled on the device"
    );
    println!(
        "device-sampled tokens: {}; greedy GPU = CPU on 4 prompts; seeded runs reproducible",
        gpu.stats().snapshot().device_sampled_tokens
    );
}
