//! Element-wise and row kernels of the CUDA backend past the dense block: gated activations
//! (SwiGLU, Gemma's GeGLU), scaling and soft-capping in place, and moving token rows (the
//! final norm's logit rows, the tokens of a host-routed expert and their weighted outputs).
//!
//! Invariant: row ids that are not the step's uploaded logit rows go up in a buffer of their
//! own, freed when the call returns, so such a call synchronises before it returns.

use super::{elementwise, per_row, CudaBackend, CudaTensor};
use crate::device::DeviceBuffer;
use crate::error::driver;

impl CudaBackend {
    /// `act(gate) * up` elementwise with the kernel `kernel` (`silu_mul` or `gelu_mul`).
    pub(super) fn gated(
        &self,
        kernel: &'static str,
        gate: &CudaTensor,
        up: &CudaTensor,
    ) -> CudaTensor {
        let out = self.alloc(gate.rows, gate.cols);
        let n = (gate.rows * gate.cols) as u64;
        let (o, g, u) = (out.ptr, gate.ptr, up.ptr);
        launch!(self, kernel, elementwise(n as usize), o, g, u, n);
        out
    }

    /// `x *= s`, or with `cap > 0` `x = cap · tanh(x / cap)`, elementwise.
    pub(super) fn scale_or_cap(&self, x: &mut CudaTensor, s: f32, cap: f32) {
        x.norm_sums = 0;
        let n = (x.rows * x.cols) as u64;
        let xp = x.ptr;
        launch!(self, "scale_or_cap", elementwise(n as usize), xp, s, cap, n);
    }

    /// Rows `rows` of `x`, in that order.
    pub(super) fn gather(&self, x: &CudaTensor, rows: &[usize]) -> CudaTensor {
        let out = self.alloc(rows.len(), x.cols);
        let uploaded = *self.step_rows.borrow() == rows;
        // Rows other than the step's logit rows (not used by the decoder) go up on their own.
        let scratch = (!uploaded).then(|| self.upload_ids(rows)).flatten();
        let rp = match uploaded {
            true => self.meta_ptr(self.meta_layout.offsets().logit_rows),
            false => scratch.as_ref().map_or(0, |b| b.ptr),
        };
        let (o, xp, cols) = (out.ptr, x.ptr, x.cols as i32);
        launch!(self, "gather_rows", per_row(rows.len()), o, xp, rp, cols);
        if scratch.is_some() {
            self.record(self.gpu.synchronize());
        }
        out
    }

    /// `x[rows[r]] += scales[r] · src[r]` for each row r of `src` (`rows` distinct).
    pub(super) fn scatter_add(
        &self,
        x: &mut CudaTensor,
        rows: &[usize],
        src: &CudaTensor,
        scales: &[f32],
    ) {
        x.norm_sums = 0;
        let (Some(scale_buf), Some(row_buf)) =
            (self.upload_recorded(scales), self.upload_ids(rows))
        else {
            return;
        };
        let n = (rows.len() * x.cols) as u64;
        let (xp, rp, sp, src_p, cols) = (x.ptr, row_buf.ptr, scale_buf.ptr, src.ptr, x.cols as i32);
        launch!(
            self,
            "scatter_add_scaled",
            elementwise(n as usize),
            xp,
            rp,
            sp,
            src_p,
            cols,
            n
        );
        // The rows and scales are freed on return: the kernel must have read them.
        self.record(self.gpu.synchronize());
    }

    /// `rows` as u32 ids in a device buffer of their own (see [`Self::upload_recorded`]).
    fn upload_ids(&self, rows: &[usize]) -> Option<DeviceBuffer> {
        let ids: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        self.upload_recorded(&ids)
    }

    /// `data` in a device buffer of its own; `None`, the error recorded as the step's, when
    /// the upload fails.
    pub(super) fn upload_recorded<T: Copy>(&self, data: &[T]) -> Option<DeviceBuffer> {
        self.gpu.upload(data).map_err(|e| self.record(Err(e))).ok()
    }
}
