//! Projections of the CUDA backend: `y = x · wᵀ (+ bias)` through the path the shapes allow
//! (quantised weights: `backend::quant`; 2..=8 bf16 tokens: the tensor-core GEMV; up to 8
//! tokens: the CUDA-core GEMV; else cuBLASLt), and the cuBLASLt product itself.
//!
//! Invariant: every path computes the same values up to summation order and rounding; `y`
//! holds `x.rows × w.rows` values (rows `ldy` apart for the strided product).

use super::{elementwise, CudaBackend, CudaTensor, CudaVector, CudaWeight};
use crate::error::driver;

impl CudaBackend {
    /// `y[t, rows] = x[t, cols] · w[rows, cols]ᵀ` on cuBLASLt (`y +=` where `accumulate`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gemm(
        &self,
        y: u64,
        x: u64,
        w: u64,
        t: usize,
        rows: usize,
        cols: usize,
        accumulate: bool,
    ) {
        self.gemm_strided(y, x, w, (t, rows, cols), rows, accumulate);
    }

    /// As [`Self::gemm`], with rows of `y` `ldy` elements apart (`w` a slice of the rows of a
    /// matrix with `ldy` rows).
    pub(super) fn gemm_strided(
        &self,
        y: u64,
        x: u64,
        w: u64,
        (t, rows, cols): (usize, usize, usize),
        ldy: usize,
        accumulate: bool,
    ) {
        if self.error.borrow().is_none() {
            let timing = self.profile_begin();
            let r = self.lt.matmul(
                &self.gpu,
                self.dtype.gemm(),
                y,
                x,
                w,
                (t, rows, cols),
                ldy,
                accumulate,
            );
            self.profile_end("cublaslt_gemm", timing);
            self.record(r);
        }
    }

    /// `y = x · wᵀ (+ bias)` (`y +=` where `accumulate`) into `y`, which holds `x.rows × w.rows`
    /// values: tensor cores for 2..=8 bf16 tokens, else the CUDA-core GEMV up to 8 tokens,
    /// else cuBLASLt (beta = 1 to accumulate) and a bias kernel.
    pub(super) fn project_into(
        &self,
        y: u64,
        x: &CudaTensor,
        w: &CudaWeight,
        bias: Option<&CudaVector>,
        accumulate: bool,
    ) {
        if w.quant.is_some() {
            self.quant_project_into(y, x, w, bias, accumulate);
            return;
        }
        if self.mma_linear_into(y, x, w, bias, accumulate) {
            return;
        }
        let (t, rows, cols) = (x.rows, w.rows, w.cols);
        if self.gemv_applies(t, cols) {
            self.gemv(y, x, w, bias, accumulate, 0);
            return;
        }
        self.gemm(y, x.ptr, w.ptr, t, rows, cols, accumulate);
        self.add_bias(y, bias, t, rows);
    }

    /// `y[t, r] += bias[r]` for `t` rows of `rows` outputs (after a cuBLASLt product, which
    /// has no bias epilogue here); nothing without a bias.
    pub(super) fn add_bias(&self, y: u64, bias: Option<&CudaVector>, t: usize, rows: usize) {
        if let Some(b) = bias {
            let (bp, c, n) = (b.buf.ptr, rows as i32, (t * rows) as u64);
            launch!(self, "add_bias", elementwise(t * rows), y, bp, c, n);
        }
    }
}
