//! Fused projections of the CUDA backend: the q/k/v projections in one GEMV launch, the gated
//! feed-forward input (gate, up and SiLU·mul) in one GEMV launch (decode); the same two as
//! one cuBLASLt GEMM each over adjacent weights (prefill). The o/down projections add into the
//! residual stream in their epilogue (`accumulate`), so a layer has no residual-add kernel.
//!
//! Invariants: each fused path applies only where its kernel does (GEMV: 1..=GEMV_MAX_ROWS
//! tokens and 16-byte-aligned rows; packed GEMM: weights adjacent in the arena) and otherwise
//! returns `None`, so the caller falls back to the unfused operations, which compute the same
//! values.

use super::norm_fold::norm_args;
use super::{elementwise, grid1, per_row, CudaBackend, CudaTensor, CudaVector, CudaWeight};
use super::{GEMV_KERNELS, GEMV_MAX_ROWS};
use crate::error::driver;

/// One q|k|v GEMV kernel per token count (compiled for f32 and bf16).
pub const GEMV_QKV_KERNELS: [&str; GEMV_MAX_ROWS] = [
    "gemv_qkv1",
    "gemv_qkv2",
    "gemv_qkv3",
    "gemv_qkv4",
    "gemv_qkv5",
    "gemv_qkv6",
    "gemv_qkv7",
    "gemv_qkv8",
];
/// One gate|up GEMV kernel per token count (compiled for f32 and bf16).
pub const GEMV_GATE_UP_KERNELS: [&str; GEMV_MAX_ROWS] = [
    "gemv_gate_up1",
    "gemv_gate_up2",
    "gemv_gate_up3",
    "gemv_gate_up4",
    "gemv_gate_up5",
    "gemv_gate_up6",
    "gemv_gate_up7",
    "gemv_gate_up8",
];

impl CudaBackend {
    /// Whether `t` tokens of width `cols` go through the weight-streaming GEMV kernels.
    pub(super) fn gemv_applies(&self, t: usize, cols: usize) -> bool {
        (1..=GEMV_MAX_ROWS).contains(&t) && (cols * self.dtype.size()) % 16 == 0
    }

    /// `y = x · wᵀ + bias` (`y += …` where `accumulate`) with the GEMV kernel; the caller has
    /// checked [`Self::gemv_applies`] and that `y` holds `x.rows × w.rows` values. `sums`
    /// (0: none) is a folded-norm slot the kernel adds the squares of `y`'s rows into.
    pub(super) fn gemv(
        &self,
        y: u64,
        x: &CudaTensor,
        w: &CudaWeight,
        bias: Option<&CudaVector>,
        accumulate: bool,
        sums: u64,
    ) {
        let (xp, wp, bp) = (x.ptr, w.ptr, bias.map_or(0u64, |b| b.buf.ptr));
        let (rows, cols) = (w.rows as i32, w.cols as i32);
        let acc = i32::from(accumulate);
        let cfg = grid1(w.rows.div_ceil(8), 256);
        launch!(
            self,
            GEMV_KERNELS[x.rows - 1],
            cfg,
            y,
            xp,
            wp,
            bp,
            rows,
            cols,
            acc,
            sums
        );
    }

    /// q, k and v of `x` in one launch, or `None` where the GEMV kernel does not apply. `norm`:
    /// a folded RMSNorm of `x` (its sums slot and eps; see `backend::norm_fold`).
    pub(super) fn fused_qkv(
        &self,
        x: &CudaTensor,
        w: [&CudaWeight; 3],
        bias: [Option<&CudaVector>; 3],
        norm: Option<(u64, f32)>,
    ) -> Option<[CudaTensor; 3]> {
        let (t, cols) = (x.rows, x.cols);
        if !self.gemv_applies(t, cols) || w.iter().any(|w| w.cols != cols) {
            return None;
        }
        let (ys, [q, k, v, xp, wq, wk, wv, bq, bk, bv], [nq, nk, nv]) =
            self.qkv_outputs_and_args(x, w, bias);
        let c = cols as i32;
        let (sums, eps) = norm_args(norm);
        let warps = w.iter().map(|w| w.rows).sum::<usize>();
        launch!(
            self,
            GEMV_QKV_KERNELS[t - 1],
            grid1(warps.div_ceil(8), 256),
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
            c,
            sums,
            eps
        );
        Some(ys)
    }

    /// The q, k and v outputs for `x` and the arguments both q|k|v kernels (CUDA-core and
    /// tensor-core) begin with: output, input, weight and bias pointers (0: no bias), then each
    /// projection's row count.
    pub(super) fn qkv_outputs_and_args(
        &self,
        x: &CudaTensor,
        w: [&CudaWeight; 3],
        bias: [Option<&CudaVector>; 3],
    ) -> ([CudaTensor; 3], [u64; 10], [i32; 3]) {
        let ys = w.map(|w| self.alloc(x.rows, w.rows));
        let b = bias.map(|b| b.map_or(0u64, |b| b.buf.ptr));
        let (yp, wp) = (ys.each_ref().map(|y| y.ptr), w.map(|w| w.ptr));
        let args = [
            yp[0], yp[1], yp[2], x.ptr, wp[0], wp[1], wp[2], b[0], b[1], b[2],
        ];
        (ys, args, w.map(|w| w.rows as i32))
    }

    /// `silu(x·Wgᵀ) * (x·Wuᵀ)` in one launch, or `None` where the GEMV kernel does not apply.
    /// `norm` as for [`Self::fused_qkv`].
    pub(super) fn fused_gate_up(
        &self,
        x: &CudaTensor,
        w_gate: &CudaWeight,
        w_up: &CudaWeight,
        norm: Option<(u64, f32)>,
    ) -> Option<CudaTensor> {
        let (t, cols) = (x.rows, x.cols);
        let same = w_gate.rows == w_up.rows && w_gate.cols == cols && w_up.cols == cols;
        if !self.gemv_applies(t, cols) || !same {
            return None;
        }
        let y = self.alloc(t, w_gate.rows);
        let (yp, xp, wg, wu) = (y.ptr, x.ptr, w_gate.ptr, w_up.ptr);
        let (rows, c) = (w_gate.rows as i32, cols as i32);
        let (sums, eps) = norm_args(norm);
        let cfg = grid1(w_gate.rows.div_ceil(8), 256);
        launch!(
            self,
            GEMV_GATE_UP_KERNELS[t - 1],
            cfg,
            yp,
            xp,
            wg,
            wu,
            rows,
            c,
            sums,
            eps
        );
        Some(y)
    }

    /// q, k and v as one GEMM over the adjacent wq|wk|wv, split (biases added) into three
    /// tensors by one kernel; `None` unless the weights are adjacent.
    pub(super) fn packed_qkv(
        &self,
        x: &CudaTensor,
        w: [&CudaWeight; 3],
        bias: [Option<&CudaVector>; 3],
    ) -> Option<[CudaTensor; 3]> {
        let start = Self::adjacent(&w)?;
        let (t, cols) = (x.rows, x.cols);
        if w[0].cols != cols {
            return None;
        }
        let n: usize = w.iter().map(|w| w.rows).sum();
        let y = self.alloc(t, n);
        self.gemm(y.ptr, x.ptr, start, t, n, cols, false);
        let [a, b, c] = w.map(|w| self.alloc(t, w.rows));
        let (ap, bp, cp, yp) = (a.ptr, b.ptr, c.ptr, y.ptr);
        let [ba, bb, bc] = bias.map(|b| b.map_or(0u64, |b| b.buf.ptr));
        let [na, nb, nc] = w.map(|w| w.rows as i32);
        launch!(
            self,
            "split_qkv",
            per_row(t),
            ap,
            bp,
            cp,
            yp,
            ba,
            bb,
            bc,
            na,
            nb,
            nc
        );
        Some([a, b, c])
    }

    /// `silu(x·Wgᵀ) * (x·Wuᵀ)` as one GEMM over the adjacent w_gate|w_up and one elementwise
    /// kernel; `None` unless the weights are adjacent.
    pub(super) fn packed_gate_up(
        &self,
        x: &CudaTensor,
        w_gate: &CudaWeight,
        w_up: &CudaWeight,
    ) -> Option<CudaTensor> {
        let start = Self::adjacent(&[w_gate, w_up])?;
        let (t, cols, inter) = (x.rows, x.cols, w_gate.rows);
        if w_up.rows != inter || w_gate.cols != cols {
            return None;
        }
        let y = self.alloc(t, 2 * inter);
        self.gemm(y.ptr, x.ptr, start, t, 2 * inter, cols, false);
        let out = self.alloc(t, inter);
        let (op, yp, i, n) = (out.ptr, y.ptr, inter as i32, (t * inter) as u64);
        launch!(
            self,
            "silu_mul_packed",
            elementwise(t * inter),
            op,
            yp,
            i,
            n
        );
        Some(out)
    }
}
