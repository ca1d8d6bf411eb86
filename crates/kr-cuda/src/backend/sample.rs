//! Sampling on the GPU: one token per logits row, so that only token ids cross PCIe. Greedy
//! rows go through `argmax` (lowest index on ties); sampled ones follow per-row parameters
//! (semantics in kernels/sample.cu: the CPU sampler's candidate set, drawn in vocabulary
//! order), launched from `step_slots.rs`, whose buffers carry the parameters and tokens.
//!
//! Invariant: a row's uniform number comes from the host (the request's own seeded
//! generator), so a seed gives the same tokens again on the same device.

pub use kr_model::RowSampling;

use super::{grid1, CudaBackend, CudaTensor};
use crate::error::driver;

impl CudaBackend {
    /// Greedy token of each row of `logits` (computed on the GPU; only ids cross PCIe).
    pub fn argmax(&self, logits: &CudaTensor) -> Vec<u32> {
        let ids = self.alloc_elems(logits.rows, 1, 4);
        let (out, x, cols) = (ids.ptr, logits.ptr, logits.cols as i32);
        launch!(self, "argmax", grid1(logits.rows, 1024), out, x, cols);
        let mut host = vec![0u32; logits.rows];
        if self.error.borrow().is_none() {
            self.record(self.gpu.copy_to_host(&mut host, ids.ptr));
        }
        host
    }
}
