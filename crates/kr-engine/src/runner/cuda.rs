//! The CUDA side of the runner: placing a model on a GPU, and [`GpuProbes`], the device
//! measurements benchmarks report beside the runner's own steps.

use super::{DTypeChoice, KvCacheDtype, RunnerConfig};
use crate::error::{EngineError, Result};
use kr_cuda::{CudaModel, CudaModelOptions, DType, EventMarks};
use kr_model::{AttnMeta, ModelWeights};

/// Loads `weights` onto GPU `ordinal`; the KV cache gets one block beyond the scheduler's.
pub(super) fn load(
    weights: &ModelWeights,
    cfg: &RunnerConfig,
    ordinal: usize,
) -> Result<CudaModel> {
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
    let options = CudaModelOptions {
        ordinal,
        dtype,
        gpu_memory_fraction: cfg.gpu_memory_fraction,
        block_size: cfg.block_size,
        max_num_batched_tokens: cfg.max_num_batched_tokens,
        max_num_seqs: cfg.max_num_seqs,
        max_model_len: cfg.max_model_len,
        num_kv_blocks: cfg.num_kv_blocks.map(|n| n + 1),
        cuda_graphs: cfg.cuda_graphs,
        kv_fp8: cfg.kv_cache_dtype == KvCacheDtype::Fp8,
        batch_invariant: cfg.batch_invariant,
    };
    Ok(CudaModel::load(weights, options)?)
}

/// GPU measurements on a placed model; borrowed from [`super::Runner::gpu_probes`].
pub struct GpuProbes<'a> {
    model: &'a mut CudaModel,
}

impl<'a> GpuProbes<'a> {
    pub(super) fn new(model: &'a mut CudaModel) -> Self {
        Self { model }
    }

    /// The GPU's name.
    pub fn device_name(&self) -> String {
        self.model.backend().gpu.info.name.clone()
    }

    /// The compute type and its size in bytes.
    pub fn dtype(&self) -> (String, usize) {
        let d = self.model.backend().dtype;
        (format!("{d:?}"), d.size())
    }

    /// KV cache bytes one token takes in one layer's key or value row for one kv head (see
    /// `CudaBackend::kv_row_bytes`).
    pub fn kv_row_bytes(&self, head_dim: usize) -> usize {
        self.model.backend().kv_row_bytes(head_dim)
    }

    /// Device-to-device copy bandwidth, read + write bytes per second.
    pub fn copy_bandwidth(&self) -> Result<f64> {
        Ok(self.model.copy_bandwidth()?)
    }

    /// FLOP/s of an FFN-shaped GEMM of `tokens` rows.
    pub fn gemm_peak(&self, tokens: usize) -> Result<f64> {
        Ok(self.model.gemm_peak(tokens)?)
    }

    /// Weight bytes per second of the batch-1 GEMV on the largest matrix shape.
    pub fn gemv_bandwidth(&self) -> Result<f64> {
        Ok(self.model.gemv_bandwidth()?)
    }

    /// GPU time of every kernel of one eager step, `(name, µs)` in launch order.
    pub fn profile_step(
        &mut self,
        ids: &[u32],
        meta: &AttnMeta,
    ) -> Result<Vec<(&'static str, f64)>> {
        Ok(self.model.profile_step(ids, meta)?)
    }

    /// `n` event marks on the model's stream (they outlive this borrow).
    pub fn event_marks(&self, n: usize) -> Result<GpuMarks> {
        Ok(GpuMarks(self.model.event_marks(n)?))
    }

    /// Device allocations since loading or the last reset (steps must make none).
    pub fn allocations_since_load(&self) -> u64 {
        self.model.allocations_since_load()
    }

    pub fn reset_allocation_count(&mut self) {
        self.model.reset_allocation_count();
    }

    /// Most bytes the step workspace has held.
    pub fn workspace_peak(&self) -> usize {
        self.model.backend().workspace_peak()
    }

    /// Largest batch in tokens the model was sized for.
    pub fn max_batched_tokens(&self) -> usize {
        self.model.options.max_num_batched_tokens
    }
}

/// Events on the GPU's stream: `mark(i)` between launches; `seconds(i, j)` is the GPU time
/// between two marks once both have run.
pub struct GpuMarks(EventMarks);

impl GpuMarks {
    pub fn mark(&self, i: usize) -> Result<()> {
        Ok(self.0.mark(i)?)
    }

    pub fn seconds(&self, i: usize, j: usize) -> Result<f64> {
        Ok(self.0.seconds(i, j)?)
    }
}
