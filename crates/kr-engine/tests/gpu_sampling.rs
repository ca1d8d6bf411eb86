//! The engine on a GPU samples on the device (only token ids come back) whenever no request
//! of the step needs its logits on the host. Ignored unless asked for; on the GPU machine run
//! `cargo test -p kr-engine --test gpu_sampling -- --ignored` (or the binary `cargo test -p
//! kr-engine --test gpu_sampling --no-run` builds, with `--ignored`); without a usable GPU the
//! tests then fail. Uses the tiny Hugging Face Llama in f32 from tests/reference.

mod common;

use common::{collect, generate, Output};
use kr_engine::{DTypeChoice, DeviceChoice, EngineConfig, EngineHandle, GenerateRequest};
use kr_engine::{FinishReason, Prompt, SamplingParams};
use std::path::PathBuf;

/// Fails the test unless GPU 0 is usable (the tests are ignored unless asked for).
fn require_gpu() {
    if let Err(e) = kr_cuda::probe(0) {
        panic!("this test needs an NVIDIA GPU; kr_cuda::probe(0) failed: {e}");
    }
}

fn tiny_llama() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/reference/hf-tiny/llama-f32")
}

fn engine(device: DeviceChoice) -> EngineHandle {
    engine_with(device, true)
}

fn engine_with(device: DeviceChoice, overlap_steps: bool) -> EngineHandle {
    let mut cfg = EngineConfig::new(tiny_llama());
    cfg.device = device;
    cfg.overlap_steps = overlap_steps;
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
#[ignore = "needs an NVIDIA GPU: cargo test -p kr-engine --test gpu_sampling -- --ignored"]
fn gpu_engine_samples_on_the_device_and_stays_reproducible() {
    require_gpu();
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

/// A batch whose requests end at different steps and for different reasons: by length, on a
/// stop token met mid-flight, on a stop string, and seeded sampling beside greedy.
fn mixed_batch(stop_token: u32, stop_text: &str) -> Vec<(Prompt, SamplingParams)> {
    vec![
        (prompt(0), greedy()),
        (
            prompt(1),
            SamplingParams {
                max_tokens: 5,
                ..greedy()
            },
        ),
        (
            prompt(2),
            SamplingParams {
                stop_token_ids: vec![stop_token],
                max_tokens: 24,
                ..greedy()
            },
        ),
        (
            prompt(3),
            SamplingParams {
                stop: vec![stop_text.to_string()],
                max_tokens: 24,
                ..greedy()
            },
        ),
        (prompt(4), seeded(11)),
    ]
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -p kr-engine --test gpu_sampling -- --ignored"]
fn overlapped_steps_give_the_tokens_of_sequential_ones() {
    require_gpu();
    let sequential = engine_with(DeviceChoice::Cuda(0), false);
    let overlapped = engine_with(DeviceChoice::Cuda(0), true);
    // A stop token and a stop string the greedy continuations of prompts 2 and 3 meet.
    let free2 = generate(
        &sequential,
        prompt(2),
        SamplingParams {
            max_tokens: 24,
            ..greedy()
        },
    );
    let free3 = generate(
        &sequential,
        prompt(3),
        SamplingParams {
            max_tokens: 24,
            ..greedy()
        },
    );
    let stop_token = free2.ids[6];
    let chars: Vec<char> = free3.text.chars().collect();
    let stop_text: String = (chars.len() / 3..chars.len().saturating_sub(1))
        .map(|i| &chars[i..i + 2])
        .find(|w| w.iter().all(char::is_ascii_alphanumeric))
        .expect("two ASCII letters in the continuation")
        .iter()
        .collect();
    let want = together(&sequential, mixed_batch(stop_token, &stop_text));
    assert_eq!(sequential.stats().snapshot().overlapped_steps, 0);
    let got = together(&overlapped, mixed_batch(stop_token, &stop_text));
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        assert_eq!(g.ids, w.ids, "request {i}: overlapped tokens differ");
        assert_eq!(g.text, w.text, "request {i}");
        assert_eq!(g.finish, w.finish, "request {i}");
    }
    assert_eq!(
        want[2].finish,
        Some(FinishReason::Stop),
        "the stop token was met"
    );
    assert!(
        want[2].ids.len() < 24 && want[3].ids.len() < 24,
        "both stops ended early"
    );
    let stats = overlapped.stats().snapshot();
    assert!(
        stats.overlapped_steps >= 10,
        "few steps overlapped: {}",
        stats.overlapped_steps
    );
    let generated: usize = got.iter().map(|o| o.ids.len()).sum();
    assert_eq!(
        stats.device_sampled_tokens, generated as u64,
        "dropped rows were counted"
    );
    println!(
        "overlapped = sequential on 5 requests ({generated} tokens, {} steps overlapped)",
        stats.overlapped_steps
    );
}
