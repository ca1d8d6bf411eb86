//! `kr-serve bench engine --device cuda`: the GPU benchmark (kr_cuda::bench) on a real model
//! or on `--random-weights --arch NAME`, written as the same kind of JSON report as the CPU
//! engine benchmark (machine, commit, command recorded).

use crate::bench::{build_commit, commit, machine};
use crate::cli::BenchEngineArgs;
use crate::error::{CliError, Result};
use kr_cuda::bench::GpuBenchSpec;
use kr_cuda::{CudaModel, CudaModelOptions, DType};
use kr_engine::{DTypeChoice, DeviceChoice, EngineError};
use kr_model::quant::GgmlType;
use serde_json::json;

/// True when the benchmark should run on a GPU (`--device cuda`, or auto with a GPU present).
pub fn wants_gpu(device: DeviceChoice) -> bool {
    match device {
        DeviceChoice::Cuda(_) => true,
        DeviceChoice::Auto => kr_cuda::probe(0).is_ok(),
        DeviceChoice::Cpu => false,
    }
}

fn device_error(e: kr_cuda::CudaError) -> CliError {
    CliError::Engine(EngineError::Device(e.to_string()))
}

pub fn bench_engine_gpu(args: BenchEngineArgs) -> Result<()> {
    let e = &args.engine;
    let ordinal = match e.device {
        DeviceChoice::Cuda(n) => n,
        _ => 0,
    };
    let dtype = match e.dtype {
        DTypeChoice::F32 => DType::F32,
        DTypeChoice::Auto | DTypeChoice::Bf16 => DType::Bf16,
        DTypeChoice::F16 => {
            return Err(CliError::Usage(
                "--dtype f16 is not implemented on CUDA; use bf16".into(),
            ))
        }
    };
    let weights = match (&e.arch, e.random_weights) {
        (Some(arch), true) => {
            let cfg = kr_model::random::arch_config(arch).ok_or_else(|| {
                CliError::Usage(format!(
                    "unknown --arch '{arch}'; known: {}",
                    kr_model::random::ARCHES.join(", ")
                ))
            })?;
            let ty = if dtype == DType::F32 {
                GgmlType::F32
            } else {
                GgmlType::BF16
            };
            eprintln!("generating random {arch} weights …");
            kr_model::random::random_weights(&cfg, ty, args.seed)
        }
        _ => kr_engine::load_model(&e.model_path())?.weights,
    };
    let max_batch = args.batch_sizes.iter().copied().max().unwrap_or(1);
    let max_len = (args.prompt_tokens + args.gen_tokens as usize + 64).max(2048 + 16);
    let opts = CudaModelOptions {
        ordinal,
        dtype,
        gpu_memory_fraction: e.gpu_memory_fraction,
        block_size: 16,
        max_num_batched_tokens: args.prefill_tokens.max(2048),
        max_num_seqs: max_batch,
        max_model_len: max_len,
        num_kv_blocks: None,
        cuda_graphs: !e.no_cuda_graphs,
    };
    eprintln!("loading onto the GPU …");
    let mut model = CudaModel::load(&weights, opts).map_err(device_error)?;
    let weight_bytes = model_weight_bytes(&weights, dtype);
    drop(weights);
    let spec = GpuBenchSpec {
        prompt_tokens: args.prompt_tokens,
        gen_tokens: args.gen_tokens as usize,
        prefill_tokens: args.prefill_tokens,
        batch_sizes: args.batch_sizes.clone(),
        batch_decode_steps: 64,
        repeat: args.repeat,
    };
    eprintln!("measuring …");
    let results = kr_cuda::bench::run(&mut model, &spec, weight_bytes).map_err(device_error)?;
    let report = json!({
        "benchmark": "engine",
        "model": e.model_path().display().to_string(),
        "device": "cuda",
        "machine": machine(),
        "commit": build_commit(),
        "checkout_commit": commit(),
        "command": crate::bench::command_line(),
        "unix_time": crate::bench::unix_time(),
        "settings": {"prompt_tokens": args.prompt_tokens, "gen_tokens": args.gen_tokens, "prefill_tokens": args.prefill_tokens, "batch_decode_steps": spec.batch_decode_steps, "repeat": args.repeat, "seed": args.seed, "cuda_graphs": !e.no_cuda_graphs},
        "results": results,
    });
    crate::bench::emit_json(&report, args.out.as_deref())?;
    Ok(())
}

/// Bytes of weights one decode step reads, as the GPU stores them (in the compute dtype): every
/// layer's matrices and the output projection (the embedding table when tied; otherwise the
/// table is only gathered from, one row per token).
fn model_weight_bytes(w: &kr_model::ModelWeights, dtype: DType) -> usize {
    let elems = |t: &kr_model::RawTensor| t.rows * t.cols;
    let layer: usize = w
        .layers
        .iter()
        .map(|l| {
            [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]
                .iter()
                .map(|t| elems(t))
                .sum::<usize>()
        })
        .sum();
    (layer + elems(w.lm_head.as_ref().unwrap_or(&w.embedding))) * dtype.size()
}
