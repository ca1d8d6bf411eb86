//! Fused projections of the CUDA backend: the q/k/v projections in one GEMV launch, the gated
//! feed-forward input (gate, up and SiLU·mul) in one GEMV launch (decode); the same two as
//! one cuBLASLt GEMM each over adjacent weights (prefill). The o/down projections add into the
//! residual stream in their epilogue (`accumulate`), and the layer's RMSNorms are folded into
//! the q|k|v, gate|up and vocabulary GEMVs ([`FoldedNorm`]), so a decode layer has no norm or
//! residual-add kernel of its own (`KR_CUDA_FOLD_NORMS=0` runs the norms as kernels).
//!
//! Invariants: each fused path applies only where its kernel does (GEMV: 1..=GEMV_MAX_ROWS
//! tokens and 16-byte-aligned rows; packed GEMM: weights adjacent in the arena) and otherwise
//! returns `None`, so the caller falls back to the unfused operations, which compute the same
//! values.

use super::{elementwise, grid1, per_row, CudaBackend, CudaTensor, CudaVector, CudaWeight};
use crate::error::driver;
use cudarc::driver::LaunchConfig;

/// Rows at or below which `linear` uses the weight-streaming GEMV kernel instead of cuBLASLt.
pub const GEMV_MAX_ROWS: usize = 8;

/// A GEMV kernel family's names for 1..=8 tokens (kernels.cu compiles one kernel per count).
macro_rules! per_token_count {
    ($family:literal) => {
        [
            concat!($family, "1"),
            concat!($family, "2"),
            concat!($family, "3"),
            concat!($family, "4"),
            concat!($family, "5"),
            concat!($family, "6"),
            concat!($family, "7"),
            concat!($family, "8"),
        ]
    };
}

/// Plain GEMV and GEMV of a normalised input (see [`FoldedNorm`]).
const GEMV: [&str; GEMV_MAX_ROWS] = per_token_count!("gemv");
const GEMV_NORM: [&str; GEMV_MAX_ROWS] = per_token_count!("gemv_norm");
const QKV: [&str; GEMV_MAX_ROWS] = per_token_count!("gemv_qkv");
const QKV_NORM: [&str; GEMV_MAX_ROWS] = per_token_count!("gemv_qkv_norm");
const GATE_UP: [&str; GEMV_MAX_ROWS] = per_token_count!("gemv_gate_up");
const GATE_UP_NORM: [&str; GEMV_MAX_ROWS] = per_token_count!("gemv_gate_up_norm");

/// Every GEMV kernel (each compiled for f32 and bf16), for loading the module.
pub const GEMV_KERNEL_FAMILIES: [[&str; GEMV_MAX_ROWS]; 6] =
    [GEMV, GEMV_NORM, QKV, QKV_NORM, GATE_UP, GATE_UP_NORM];

/// Shared memory the `_norm` GEMVs may use for their staged input without opting in to more
/// (the default per-block limit).
const NORM_STAGE_MAX_BYTES: usize = 48 << 10;

/// An RMSNorm folded into a GEMV: the `_norm` kernels stage `rms_norm(x) * weight` of their
/// input rows in shared memory (kernels.cu, stage_normed_input) instead of a norm kernel
/// writing it out first.
#[derive(Clone, Copy)]
pub(super) struct FoldedNorm {
    weight: u64,
    eps: f32,
}

impl FoldedNorm {
    pub(super) fn new(weight: &CudaVector, eps: f32) -> Self {
        Self {
            weight: weight.buf.ptr,
            eps,
        }
    }
}

impl CudaBackend {
    /// Whether `t` tokens of width `cols` go through the weight-streaming GEMV kernels.
    pub(super) fn gemv_applies(&self, t: usize, cols: usize) -> bool {
        (1..=GEMV_MAX_ROWS).contains(&t) && (cols * self.dtype.size()) % 16 == 0
    }

    /// `norm` where it can be folded into the GEMV of `t` tokens of width `cols` (the GEMV
    /// applies, folding is on and the staged rows fit in shared memory), else `None`.
    pub(super) fn foldable(
        &self,
        norm: &CudaVector,
        eps: f32,
        t: usize,
        cols: usize,
    ) -> Option<FoldedNorm> {
        let fits = t * cols * self.dtype.size() <= NORM_STAGE_MAX_BYTES;
        (self.fold_norms && self.gemv_applies(t, cols) && fits).then(|| FoldedNorm::new(norm, eps))
    }

    /// The launch shape of a GEMV kernel over `warps` weight rows (8 per block), with the
    /// shared memory its staged input needs when `norm` is folded in.
    fn gemv_launch(
        &self,
        warps: usize,
        t: usize,
        cols: usize,
        norm: Option<FoldedNorm>,
    ) -> LaunchConfig {
        let mut cfg = grid1(warps.div_ceil(8), 256);
        if norm.is_some() {
            cfg.shared_mem_bytes = (t * cols * self.dtype.size()) as u32;
        }
        cfg
    }

    /// `y = norm(x) · wᵀ` with the GEMV kernel that stages the normalised input.
    pub(super) fn gemv_normed(&self, y: u64, x: &CudaTensor, w: &CudaWeight, norm: FoldedNorm) {
        let (xp, wp, bp) = (x.ptr, w.ptr, 0u64);
        let (rows, cols) = (w.rows as i32, w.cols as i32);
        let (g, eps) = (norm.weight, norm.eps);
        let cfg = self.gemv_launch(w.rows, x.rows, w.cols, Some(norm));
        launch!(
            self,
            GEMV_NORM[x.rows - 1],
            cfg,
            y,
            xp,
            wp,
            bp,
            rows,
            cols,
            g,
            eps
        );
    }

    /// `y = x · wᵀ + bias` (`y += …` where `accumulate`) with the GEMV kernel; the caller has
    /// checked [`Self::gemv_applies`] and that `y` holds `x.rows × w.rows` values.
    pub(super) fn gemv(
        &self,
        y: u64,
        x: &CudaTensor,
        w: &CudaWeight,
        bias: Option<&CudaVector>,
        accumulate: bool,
    ) {
        let (xp, wp, bp) = (x.ptr, w.ptr, bias.map_or(0u64, |b| b.buf.ptr));
        let (rows, cols) = (w.rows as i32, w.cols as i32);
        let acc = i32::from(accumulate);
        let cfg = grid1(w.rows.div_ceil(8), 256);
        launch!(self, GEMV[x.rows - 1], cfg, y, xp, wp, bp, rows, cols, acc);
    }

    /// q, k and v of `norm(x)` (`x` without a norm) in one launch, or `None` where the GEMV
    /// kernel does not apply.
    pub(super) fn fused_qkv(
        &self,
        x: &CudaTensor,
        w: [&CudaWeight; 3],
        bias: [Option<&CudaVector>; 3],
        norm: Option<FoldedNorm>,
    ) -> Option<[CudaTensor; 3]> {
        let (t, cols) = (x.rows, x.cols);
        if !self.gemv_applies(t, cols) || w.iter().any(|w| w.cols != cols) {
            return None;
        }
        let [yq, yk, yv] = w.map(|w| self.alloc(t, w.rows));
        let (q, k, v, xp) = (yq.ptr, yk.ptr, yv.ptr, x.ptr);
        let (wq, wk, wv) = (w[0].ptr, w[1].ptr, w[2].ptr);
        let [bq, bk, bv] = bias.map(|b| b.map_or(0u64, |b| b.buf.ptr));
        let [nq, nk, nv] = w.map(|w| w.rows as i32);
        let c = cols as i32;
        let (g, eps) = norm.map_or((0u64, 0f32), |n| (n.weight, n.eps));
        let warps = w.iter().map(|w| w.rows).sum::<usize>();
        let names = if norm.is_some() { QKV_NORM } else { QKV };
        launch!(
            self,
            names[t - 1],
            self.gemv_launch(warps, t, cols, norm),
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
            g,
            eps
        );
        Some([yq, yk, yv])
    }

    /// `silu(h·Wgᵀ) * (h·Wuᵀ)` with `h = norm(x)` (`x` without a norm) in one launch, or
    /// `None` where the GEMV kernel does not apply.
    pub(super) fn fused_gate_up(
        &self,
        x: &CudaTensor,
        w_gate: &CudaWeight,
        w_up: &CudaWeight,
        norm: Option<FoldedNorm>,
    ) -> Option<CudaTensor> {
        let (t, cols) = (x.rows, x.cols);
        let same = w_gate.rows == w_up.rows && w_gate.cols == cols && w_up.cols == cols;
        if !self.gemv_applies(t, cols) || !same {
            return None;
        }
        let y = self.alloc(t, w_gate.rows);
        let (yp, xp, wg, wu) = (y.ptr, x.ptr, w_gate.ptr, w_up.ptr);
        let (rows, c) = (w_gate.rows as i32, cols as i32);
        let (g, eps) = norm.map_or((0u64, 0f32), |n| (n.weight, n.eps));
        let cfg = self.gemv_launch(w_gate.rows, t, cols, norm);
        let names = if norm.is_some() {
            GATE_UP_NORM
        } else {
            GATE_UP
        };
        launch!(self, names[t - 1], cfg, yp, xp, wg, wu, rows, c, g, eps);
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
