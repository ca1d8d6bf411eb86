//! Projections of 2..=8 tokens on tensor cores (`kernels/gemv_mma.cu`): decode steps of a
//! few sequences stream each weight once through `mma.sync`, instead of the CUDA-core GEMV
//! that re-reads and unpacks every token's activations for each weight vector.
//!
//! Invariants: applies only to bf16 on compute capability 8.0+, 2..=8 tokens, widths that
//! are a multiple of 32 and row counts that are multiples of 16 (one warp owns 16 rows); each
//! function returns `None` otherwise so the caller falls back to the CUDA-core kernels, which
//! compute the same values up to summation order. `KR_CUDA_MMA_GEMV=0` turns it off.

use super::{grid1, CudaBackend, CudaTensor, CudaVector, CudaWeight, DType, GEMV_MAX_ROWS};
use crate::error::driver;

/// The kernels (bf16 only).
pub const GEMV_MMA_KERNEL_NAMES: [&str; 3] = ["gemv_mma", "gemv_mma_qkv", "gemv_mma_gate_up"];

/// Threads per block (GM_WARPS = 8 warps in the kernel, splitting the columns of one tile).
const THREADS: u32 = 256;
/// Weight rows per block (one mma tile).
const ROWS_PER_BLOCK: usize = 16;

/// The fewest tokens that take the tensor-core GEMV: `KR_CUDA_MMA_GEMV=0` turns it off
/// (`usize::MAX`), `KR_CUDA_MMA_GEMV=1` sends single tokens to it too; default 2.
pub(super) fn mma_gemv_min_tokens() -> usize {
    match std::env::var("KR_CUDA_MMA_GEMV").as_deref().map(str::trim) {
        Ok("0") => usize::MAX,
        Ok("1") => 1,
        _ => 2,
    }
}

/// Blocks for `rows` output rows.
fn blocks(rows: usize) -> cudarc::driver::LaunchConfig {
    grid1(rows / ROWS_PER_BLOCK, THREADS)
}

impl CudaBackend {
    /// Whether `t` tokens of width `cols` times weights of `rows` rows run on tensor cores.
    fn mma_gemv_applies(&self, t: usize, cols: usize, rows: &[usize]) -> bool {
        self.dtype == DType::Bf16
            && self.gpu.info.compute_capability.0 >= 8
            && (self.mma_gemv_min_tokens..=GEMV_MAX_ROWS).contains(&t)
            // `%` rather than `is_multiple_of`: the crate's rust-version is 1.85.
            && cols % 32 == 0
            && rows.iter().all(|r| r % ROWS_PER_BLOCK == 0)
    }

    /// `y = x · Wᵀ (+ bias)` (`y +=` where `accumulate`) on tensor cores, `y` holding
    /// `x.rows × w.rows` values; false (nothing launched) where that does not apply.
    pub(super) fn mma_linear_into(
        &self,
        y: u64,
        x: &CudaTensor,
        w: &CudaWeight,
        bias: Option<&CudaVector>,
        accumulate: bool,
    ) -> bool {
        if !self.mma_gemv_applies(x.rows, x.cols, &[w.rows]) || w.cols != x.cols {
            return false;
        }
        let (xp, wp, bp) = (x.ptr, w.ptr, bias.map_or(0u64, |b| b.buf.ptr));
        let (rows, cols, nt) = (w.rows as i32, x.cols as i32, x.rows as i32);
        let acc = i32::from(accumulate);
        launch!(
            self,
            "gemv_mma",
            blocks(w.rows),
            y,
            xp,
            wp,
            bp,
            rows,
            cols,
            nt,
            acc
        );
        true
    }

    /// q, k and v on tensor cores in one launch, or `None`.
    pub(super) fn mma_qkv(
        &self,
        x: &CudaTensor,
        w: [&CudaWeight; 3],
        bias: [Option<&CudaVector>; 3],
    ) -> Option<[CudaTensor; 3]> {
        let rows = w.map(|w| w.rows);
        if !self.mma_gemv_applies(x.rows, x.cols, &rows) || w.iter().any(|w| w.cols != x.cols) {
            return None;
        }
        let [yq, yk, yv] = w.map(|w| self.alloc(x.rows, w.rows));
        let (q, k, v, xp) = (yq.ptr, yk.ptr, yv.ptr, x.ptr);
        let (wq, wk, wv) = (w[0].ptr, w[1].ptr, w[2].ptr);
        let [bq, bk, bv] = bias.map(|b| b.map_or(0u64, |b| b.buf.ptr));
        let [nq, nk, nv] = rows.map(|r| r as i32);
        let (cols, nt) = (x.cols as i32, x.rows as i32);
        let cfg = blocks(rows.iter().sum());
        launch!(
            self,
            "gemv_mma_qkv",
            cfg,
            q,
            k,
            v,
            xp,
            wq,
            wk,
            wv,
            bq,
            bk,
            bv,
            nq,
            nk,
            nv,
            cols,
            nt
        );
        Some([yq, yk, yv])
    }

    /// `silu(x·Wgᵀ) * (x·Wuᵀ)` on tensor cores in one launch, or `None`.
    pub(super) fn mma_gate_up(
        &self,
        x: &CudaTensor,
        w_gate: &CudaWeight,
        w_up: &CudaWeight,
    ) -> Option<CudaTensor> {
        let same = w_gate.rows == w_up.rows && w_gate.cols == x.cols && w_up.cols == x.cols;
        if !same || !self.mma_gemv_applies(x.rows, x.cols, &[w_gate.rows]) {
            return None;
        }
        let y = self.alloc(x.rows, w_gate.rows);
        let (yp, xp, wg, wu) = (y.ptr, x.ptr, w_gate.ptr, w_up.ptr);
        let (rows, cols, nt) = (w_gate.rows as i32, x.cols as i32, x.rows as i32);
        let cfg = blocks(w_gate.rows);
        launch!(
            self,
            "gemv_mma_gate_up",
            cfg,
            yp,
            xp,
            wg,
            wu,
            rows,
            cols,
            nt
        );
        Some(y)
    }
}
