//! Sampling on the GPU: one token per logits row from per-row parameters, so that only token
//! ids cross PCIe (semantics in kernels/sample.cu: the CPU sampler's candidate set, drawn in
//! vocabulary order).
//!
//! Invariant: a row's uniform number comes from the host (the request's own seeded
//! generator), so a seed gives the same tokens again on the same device.

use super::{grid1, CudaBackend, CudaTensor};
use crate::error::driver;

/// Floats per row in the kernel's parameter array (SAMPLE_PARAMS in sample.cu).
const SAMPLE_PARAMS: usize = 5;

/// How one logits row is sampled on the device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowSampling {
    /// At or below 0: greedy (the lowest index among the largest logits); the rest is ignored.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; 0 keeps all.
    pub top_k: u32,
    /// Keep the smallest most-likely set whose probability reaches `top_p`; 1 keeps all.
    pub top_p: f32,
    /// Keep tokens at least `min_p` times as likely as the most likely; 0 keeps all.
    pub min_p: f32,
    /// In [0, 1): where the draw falls in the kept tokens' probability mass.
    pub uniform: f32,
}

impl RowSampling {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            uniform: 0.0,
        }
    }
}

impl CudaBackend {
    /// One token for each of the first `rows.len()` rows of `logits`.
    pub fn sample(&self, logits: &CudaTensor, rows: &[RowSampling]) -> Vec<u32> {
        let n = logits.rows.min(rows.len());
        let params: Vec<f32> = rows[..n]
            .iter()
            .flat_map(|r| [r.temperature, r.top_k as f32, r.top_p, r.min_p, r.uniform])
            .collect();
        let dev = self.alloc_elems(n, SAMPLE_PARAMS, 4);
        if self.error.borrow().is_none() {
            // In stream order: the workspace range may still be in use by queued kernels.
            self.record(self.gpu.upload_in_order(dev.ptr, &params));
        }
        let ids = self.alloc_elems(n, 1, 4);
        let (out, x, cols, pp) = (ids.ptr, logits.ptr, logits.cols as i32, dev.ptr);
        launch!(self, "sample", grid1(n, 1024), out, x, cols, pp);
        let mut host = vec![0u32; n];
        if self.error.borrow().is_none() {
            self.record(self.gpu.copy_to_host(&mut host, ids.ptr));
        }
        host
    }
}
