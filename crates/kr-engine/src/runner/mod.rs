//! The model runner: a loaded model placed on its device with its KV cache, executing one
//! packed batch at a time. The engine loop, `run`, `serve` and every benchmark go through
//! it; nothing above kr-engine touches a backend.
//!
//! - [`Runner::place`] puts the weights on the configured device (`auto` picks CUDA when
//!   the driver loads and a GPU is present; `cuda` without one is an error naming what is
//!   missing) and sizes the KV cache;
//! - [`Runner::forward`] returns logits rows to the host (the CPU path, prompt logprobs);
//! - [`Runner::launch_sampled`] / [`Runner::collect_sampled`] sample on the device, so only
//!   token ids come back, and let the next step start before this one's tokens are read.
//!
//! Invariants: the KV pool the scheduler manages has exactly [`Runner::num_blocks`] blocks;
//! the cache holds one block more (index `num_blocks`), the scratch block prompt-logprob
//! replays write to. Errors are typed ([`EngineError`]); a failed step leaves the runner
//! usable for the next one.

mod cuda;
mod device;

pub use cuda::{GpuMarks, GpuProbes};
pub use device::{DTypeChoice, DeviceChoice, KvCacheDtype};

use crate::error::{EngineError, Result};
use kr_cpu::{CpuBackend, CpuKvCache};
use kr_cuda::CudaModel;
use kr_model::{AttnMeta, Decoder, ModelConfig, ModelWeights, RowSampling};

/// Where and how to place a model (the device half of [`crate::EngineConfig`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerConfig {
    pub device: DeviceChoice,
    pub dtype: DTypeChoice,
    pub kv_cache_dtype: KvCacheDtype,
    /// Memory for the KV cache on the CPU, in MiB (a GPU sizes its cache from
    /// `gpu_memory_fraction`).
    pub kv_cache_mib: usize,
    pub block_size: usize,
    /// Exact number of KV blocks the scheduler may use, overriding the sizing (tests).
    pub num_kv_blocks: Option<usize>,
    /// Largest batch in tokens and in sequences (sizes the GPU workspace).
    pub max_num_batched_tokens: usize,
    pub max_num_seqs: usize,
    pub max_model_len: usize,
    /// On CUDA: the share of GPU memory for weights, KV cache and workspace together.
    pub gpu_memory_fraction: f64,
    /// On CUDA: replay decode steps from captured graphs.
    pub cuda_graphs: bool,
    /// On CUDA: projections and decode attention computed the same for any batch.
    pub batch_invariant: bool,
}

/// The CPU backend: the decoder in f32 and its paged KV cache.
pub struct CpuRunner {
    decoder: Decoder<CpuBackend>,
    cache: CpuKvCache,
}

/// A model placed on a device, ready to run batches.
pub enum Runner {
    Cpu(Box<CpuRunner>),
    Cuda(Box<CudaModel>),
}

impl Runner {
    /// Places `weights` on the configured device.
    pub fn place(weights: &ModelWeights, cfg: &RunnerConfig) -> Result<Self> {
        let runner = match cfg.device.resolve() {
            DeviceChoice::Cuda(ordinal) => Self::Cuda(Box::new(cuda::load(weights, cfg, ordinal)?)),
            _ => Self::Cpu(Box::new(place_cpu(weights, cfg)?)),
        };
        if runner.num_blocks() == 0 {
            return Err(EngineError::Config(format!(
                "a KV cache of {} MiB holds no block of {} tokens; raise kv_cache_mib",
                cfg.kv_cache_mib, cfg.block_size
            )));
        }
        tracing::info!(
            "model on {}, {} KV blocks",
            runner.describe(),
            runner.num_blocks()
        );
        Ok(runner)
    }

    /// KV blocks the scheduler may hand out (the cache holds one more: the scratch block).
    pub fn num_blocks(&self) -> usize {
        match self {
            Self::Cpu(c) => c.cache.layout.num_blocks.saturating_sub(1),
            Self::Cuda(m) => m.num_blocks.saturating_sub(1),
        }
    }

    pub fn config(&self) -> &ModelConfig {
        match self {
            Self::Cpu(c) => &c.decoder.config,
            Self::Cuda(m) => m.config(),
        }
    }

    /// The device in words: `cpu (f32)`, `NVIDIA H100 80GB HBM3 (Bf16)`,
    /// `NVIDIA H100 80GB HBM3 (Bf16, fp8 KV cache)`.
    pub fn describe(&self) -> String {
        match self {
            Self::Cpu(_) => "cpu (f32)".into(),
            Self::Cuda(m) => {
                let b = m.backend();
                let kv = if b.kv_fp8() { ", fp8 KV cache" } else { "" };
                format!("{} ({:?}{kv})", b.gpu.info.name, b.dtype)
            }
        }
    }

    /// Logits of `meta.logit_rows` for one packed batch, row-major `[rows, vocab]`.
    pub fn forward(&mut self, ids: &[u32], meta: &AttnMeta) -> Result<Vec<f32>> {
        match self {
            Self::Cpu(c) => Ok(kr_cpu::run_in_pool(|| {
                c.decoder.forward(ids, meta, &mut c.cache)
            })),
            Self::Cuda(m) => Ok(m.forward(ids, meta)?),
        }
    }

    /// Logits of `meta.logit_rows` and the final-normed hidden states of `hidden_rows`
    /// (`[rows, hidden_size]`): the output embedding requests pool.
    pub fn forward_with_hidden(
        &mut self,
        ids: &[u32],
        meta: &AttnMeta,
        hidden_rows: &[usize],
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        match self {
            Self::Cpu(c) => Ok(kr_cpu::run_in_pool(|| {
                c.decoder
                    .forward_with_hidden(ids, meta, hidden_rows, &mut c.cache)
            })),
            Self::Cuda(m) => Ok(m.forward_with_hidden(ids, meta, hidden_rows)?),
        }
    }

    /// Drops the device's launched-but-uncollected steps (after a failed step).
    pub fn drop_in_flight(&mut self) {
        if let Self::Cuda(m) = self {
            m.discard_outstanding();
        }
    }

    /// Whether steps can sample on the device (only token ids come back).
    pub fn samples_on_device(&self) -> bool {
        matches!(self, Self::Cuda(_))
    }

    /// One token per `meta.logit_rows` entry, chosen on the device with `rows` (in that
    /// order). On the CPU there is nothing to gain: the caller samples the logits itself.
    pub fn forward_sampled(
        &mut self,
        ids: &[u32],
        meta: &AttnMeta,
        rows: &[RowSampling],
    ) -> Result<Vec<u32>> {
        self.forward_sampled_with(ids, meta, || rows)
    }

    /// [`Runner::forward_sampled`] with the rows made by `rows` once the forward pass is
    /// queued on the device, so that host work (a grammar's mask) overlaps it.
    pub fn forward_sampled_with<R: AsRef<[RowSampling]>>(
        &mut self,
        ids: &[u32],
        meta: &AttnMeta,
        rows: impl FnOnce() -> R,
    ) -> Result<Vec<u32>> {
        match self {
            Self::Cpu(_) => Err(no_device_sampling()),
            Self::Cuda(m) => {
                m.no_steps_outstanding()?;
                m.launch_sampled_with(ids, meta, rows, false)?;
                Ok(m.collect_sampled()?)
            }
        }
    }

    /// Starts a step like [`Runner::forward_sampled`] without waiting for its tokens
    /// ([`Runner::collect_sampled`] returns them; at most two steps are out). With `feed`,
    /// the device takes the step's input ids from the tokens of the step launched just
    /// before (one per id).
    pub fn launch_sampled(
        &mut self,
        ids: &[u32],
        meta: &AttnMeta,
        rows: &[RowSampling],
        feed: bool,
    ) -> Result<()> {
        match self {
            Self::Cpu(_) => Err(no_device_sampling()),
            Self::Cuda(m) => Ok(m.launch_sampled(ids, meta, rows, feed)?),
        }
    }

    /// The tokens of the oldest step started by [`Runner::launch_sampled`].
    pub fn collect_sampled(&mut self) -> Result<Vec<u32>> {
        match self {
            Self::Cpu(_) => Err(no_device_sampling()),
            Self::Cuda(m) => Ok(m.collect_sampled()?),
        }
    }

    /// Turns CUDA graphs for decode steps on or off (no effect on the CPU).
    pub fn set_cuda_graphs(&mut self, on: bool) {
        if let Self::Cuda(m) = self {
            m.options.cuda_graphs = on;
        }
    }

    /// The device measurements benchmarks report (bandwidth, GEMM peak, per-kernel time);
    /// `None` on the CPU.
    pub fn gpu_probes(&mut self) -> Option<GpuProbes<'_>> {
        match self {
            Self::Cpu(_) => None,
            Self::Cuda(m) => Some(GpuProbes::new(m)),
        }
    }
}

/// A GPU tuning switch (an environment variable read by the CUDA backend) and its value
/// in this process.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TuningSwitch {
    pub name: &'static str,
    /// The value set in the environment; `None` means the default is in force.
    pub value: Option<String>,
    pub default: &'static str,
    pub allowed: &'static str,
    pub effect: &'static str,
}

/// Every GPU tuning switch with its value in this process's environment.
pub fn tuning_switches() -> Vec<TuningSwitch> {
    kr_cuda::tuning::SWITCHES
        .iter()
        .map(|s| TuningSwitch {
            name: s.name,
            value: kr_cuda::tuning::value(s.name),
            default: s.default,
            allowed: s.allowed,
            effect: s.effect,
        })
        .collect()
}

fn no_device_sampling() -> EngineError {
    EngineError::Config("sampling on the device needs a GPU".into())
}

fn place_cpu(weights: &ModelWeights, cfg: &RunnerConfig) -> Result<CpuRunner> {
    if matches!(cfg.dtype, DTypeChoice::Bf16 | DTypeChoice::F16) {
        return Err(EngineError::Config(
            "the CPU backend computes in f32; use --dtype auto or f32 with --device cpu".into(),
        ));
    }
    if cfg.kv_cache_dtype == KvCacheDtype::Fp8 {
        return Err(EngineError::Config(
            "kv_cache_dtype fp8 is implemented on CUDA only; use --kv-cache-dtype auto with --device cpu".into(),
        ));
    }
    let per_block = weights.config.kv_bytes_per_token() * cfg.block_size.max(1);
    if per_block == 0 {
        return Err(EngineError::Config(
            "the model's config gives no KV cache per token (zero layers, KV heads or head size)"
                .into(),
        ));
    }
    let blocks = cfg
        .num_kv_blocks
        .unwrap_or((cfg.kv_cache_mib << 20) / per_block);
    let decoder = Decoder::new(CpuBackend, weights);
    let cache = decoder.new_kv_cache(blocks + 1, cfg.block_size);
    Ok(CpuRunner { decoder, cache })
}
