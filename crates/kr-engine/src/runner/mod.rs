//! Where the engine's steps run: the CPU backend with its KV cache, or a [`CudaModel`] (which
//! owns its cache and decode graphs). `--device auto` picks CUDA when the driver loads and a
//! GPU is present; `--device cuda` without one is an error naming what is missing.
//!
//! Invariant: the KV pool the scheduler manages has exactly the blocks of the chosen cache.

use crate::engine::EngineConfig;
use crate::error::{EngineError, Result};
use crate::model::LoadedModel;
use crate::sampler::DeviceDraw;
use kr_cpu::CpuKvCache;
use kr_cuda::{CudaModel, CudaModelOptions, DType, RowSampling};
use kr_model::AttnMeta;

/// `--device`: where to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("unknown device '{s}'; use auto, cpu, cuda or cuda:N")),
        }
    }
}

/// `--dtype`: the compute type on the GPU (the CPU backend always computes in f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DTypeChoice {
    Auto,
    F32,
    Bf16,
    F16,
}

impl std::str::FromStr for DTypeChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "f32" | "float32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            "f16" | "float16" => Ok(Self::F16),
            _ => Err(format!("unknown dtype '{s}'; use auto, f32, bf16 or f16")),
        }
    }
}

pub(crate) enum Compute {
    Cpu(CpuKvCache),
    Cuda(Box<CudaModel>),
}

impl Compute {
    /// Places the model on the configured device; returns it with the number of KV blocks the
    /// scheduler may hand out. The cache holds one block more (index = that number): the
    /// scratch block prompt-logprob replays write to.
    pub(crate) fn place(
        model: &LoadedModel,
        cfg: &EngineConfig,
        max_model_len: usize,
    ) -> Result<(Self, usize)> {
        let device = match cfg.device {
            DeviceChoice::Auto if kr_cuda::probe(0).is_ok() => DeviceChoice::Cuda(0),
            DeviceChoice::Auto => DeviceChoice::Cpu,
            d => d,
        };
        match device {
            DeviceChoice::Cuda(ordinal) => {
                let m = CudaModel::load(&model.weights, cuda_options(cfg, ordinal, max_model_len)?)
                    .map_err(|e| EngineError::Device(e.to_string()))?;
                let blocks = m.num_blocks.saturating_sub(1);
                tracing::info!(
                    "model on {} ({:?}), {blocks} KV blocks",
                    m.backend().gpu.info.name,
                    m.backend().dtype
                );
                Ok((Self::Cuda(Box::new(m)), blocks))
            }
            _ => {
                if matches!(cfg.dtype, DTypeChoice::Bf16 | DTypeChoice::F16) {
                    return Err(EngineError::Config(
                        "the CPU backend computes in f32; use --dtype auto or f32 with --device cpu"
                            .into(),
                    ));
                }
                let mc = model.config();
                let blocks = cfg.num_kv_blocks.unwrap_or(
                    (cfg.kv_cache_mib << 20) / (mc.kv_bytes_per_token() * cfg.block_size.max(1)),
                );
                Ok((
                    Self::Cpu(model.decoder.new_kv_cache(blocks + 1, cfg.block_size)),
                    blocks,
                ))
            }
        }
    }

    /// Logits of `meta.logit_rows` for one packed batch.
    pub(crate) fn forward(
        &mut self,
        model: &LoadedModel,
        ids: &[u32],
        meta: &AttnMeta,
    ) -> std::result::Result<Vec<f32>, String> {
        match self {
            Self::Cpu(cache) => Ok(model.decoder.forward(ids, meta, cache)),
            Self::Cuda(m) => m.forward(ids, meta).map_err(|e| e.to_string()),
        }
    }

    /// Whether steps can sample on the device (only token ids come back).
    pub(crate) fn samples_on_device(&self) -> bool {
        matches!(self, Self::Cuda(_))
    }

    /// One token per `meta.logit_rows` entry, chosen on the device with `draws` (in that
    /// order). On the CPU there is nothing to gain: the caller samples the logits itself.
    pub(crate) fn forward_sampled(
        &mut self,
        ids: &[u32],
        meta: &AttnMeta,
        draws: &[DeviceDraw],
    ) -> std::result::Result<Vec<u32>, String> {
        self.launch_sampled(ids, meta, draws, false)?;
        self.collect_sampled()
    }

    /// Starts a step like [`Compute::forward_sampled`] without waiting for its tokens
    /// ([`Compute::collect_sampled`] returns them). With `feed`, the device takes the step's
    /// input ids from the tokens of the step launched just before (one per id).
    pub(crate) fn launch_sampled(
        &mut self,
        ids: &[u32],
        meta: &AttnMeta,
        draws: &[DeviceDraw],
        feed: bool,
    ) -> std::result::Result<(), String> {
        match self {
            Self::Cpu(_) => Err("sampling on the device needs a GPU".into()),
            Self::Cuda(m) => {
                let rows: Vec<RowSampling> = draws
                    .iter()
                    .map(|d| RowSampling {
                        temperature: d.temperature,
                        top_k: d.top_k,
                        top_p: d.top_p,
                        min_p: d.min_p,
                        uniform: d.uniform,
                    })
                    .collect();
                m.launch_sampled(ids, meta, &rows, feed)
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// The tokens of the oldest step started by [`Compute::launch_sampled`].
    pub(crate) fn collect_sampled(&mut self) -> std::result::Result<Vec<u32>, String> {
        match self {
            Self::Cpu(_) => Err("sampling on the device needs a GPU".into()),
            Self::Cuda(m) => m.collect_sampled().map_err(|e| e.to_string()),
        }
    }
}

fn cuda_options(
    cfg: &EngineConfig,
    ordinal: usize,
    max_model_len: usize,
) -> Result<CudaModelOptions> {
    let dtype = match cfg.dtype {
        DTypeChoice::F32 => DType::F32,
        DTypeChoice::Auto | DTypeChoice::Bf16 => DType::Bf16,
        DTypeChoice::F16 => {
            return Err(EngineError::Config(
                "--dtype f16 is not implemented on CUDA yet; use bf16 (same size) or f32".into(),
            ))
        }
    };
    if !(cfg.gpu_memory_fraction > 0.0 && cfg.gpu_memory_fraction <= 1.0) {
        return Err(EngineError::Config(format!(
            "gpu_memory_fraction must be in (0, 1], got {}",
            cfg.gpu_memory_fraction
        )));
    }
    Ok(CudaModelOptions {
        ordinal,
        dtype,
        gpu_memory_fraction: cfg.gpu_memory_fraction,
        block_size: cfg.block_size,
        max_num_batched_tokens: cfg.max_num_batched_tokens,
        max_num_seqs: cfg.max_num_seqs,
        max_model_len,
        num_kv_blocks: cfg.num_kv_blocks.map(|n| n + 1),
        cuda_graphs: cfg.cuda_graphs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_and_dtype_names() {
        assert_eq!("cuda:1".parse::<DeviceChoice>(), Ok(DeviceChoice::Cuda(1)));
        assert_eq!("cuda".parse::<DeviceChoice>(), Ok(DeviceChoice::Cuda(0)));
        assert!("gpu"
            .parse::<DeviceChoice>()
            .unwrap_err()
            .contains("auto, cpu, cuda"));
        assert_eq!("bfloat16".parse::<DTypeChoice>(), Ok(DTypeChoice::Bf16));
        assert!("int4".parse::<DTypeChoice>().is_err());
    }
}
