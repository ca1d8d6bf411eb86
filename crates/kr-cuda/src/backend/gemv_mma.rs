//! Projections of 2..=8 tokens on tensor cores (`kernels/gemv_mma.cu`): decode steps of a
//! few sequences stream each weight once through `mma.sync`, instead of the CUDA-core GEMV
//! that re-reads and unpacks every token's activations for each weight vector.
//!
//! Invariants: applies only to bf16 on compute capability 8.0+, 2..=8 tokens, widths that
//! are a multiple of 32 and row counts that are multiples of 16 (one block owns 16 rows); each
//! function launches nothing otherwise (`None` / `false`) so the caller falls back to the
//! CUDA-core kernels, which compute the same values up to summation order.
//! `KR_CUDA_MMA_GEMV=0` turns it off.
//!
//! Batch-invariant mode takes every projection of 1..=`mma_gemv_max_tokens` tokens, launched
//! once per group of 8: a token is one column of the mma, whose sums neither the other
//! columns nor the group's size touch, so each token's outputs are the same in any batch.

use super::{grid1, CudaBackend, CudaTensor, CudaVector, CudaWeight, DType, GEMV_MAX_ROWS};
use crate::error::driver;

/// The kernels (bf16 only).
pub const GEMV_MMA_KERNEL_NAMES: [&str; 3] = ["gemv_mma", "gemv_mma_qkv", "gemv_mma_gate_up"];

/// The kernel's compile-time shape: warps per block splitting the columns of one tile
/// (GM_WARPS) and 32-column blocks loaded per warp before their mma (GM_UNROLL); 16 and 4
/// unless `KR_CUDA_MMA_WARPS` (4, 8, 16 or 32) or `KR_CUDA_MMA_UNROLL` (2, 4 or 8) say
/// otherwise, for comparison runs (docs/gpu-tuning.md has the measurements behind the
/// defaults).
struct Shape {
    warps: usize,
    unroll: usize,
}

fn shape() -> &'static Shape {
    static SHAPE: std::sync::OnceLock<Shape> = std::sync::OnceLock::new();
    SHAPE.get_or_init(|| {
        let pick = |var: &str, allowed: &[usize], default: usize| {
            crate::tuning::value(var)
                .and_then(|v| v.trim().parse().ok())
                .filter(|v| allowed.contains(v))
                .unwrap_or(default)
        };
        Shape {
            warps: pick("KR_CUDA_MMA_WARPS", &[4, 8, 16, 32], 16),
            unroll: pick("KR_CUDA_MMA_UNROLL", &[2, 4, 8], 4),
        }
    })
}

/// The NVRTC defines that give the kernel [`shape`].
pub fn compile_defines() -> [String; 2] {
    let s = shape();
    [
        format!("-DGM_WARPS={}", s.warps),
        format!("-DGM_UNROLL={}", s.unroll),
    ]
}

/// Weight rows per block (one mma tile).
const ROWS_PER_BLOCK: usize = 16;

/// The fewest tokens that take the tensor-core GEMV: `KR_CUDA_MMA_GEMV=0` turns it off
/// (`usize::MAX`), `KR_CUDA_MMA_GEMV=1` sends single tokens to it too; default 2.
pub(super) fn mma_gemv_min_tokens() -> usize {
    match crate::tuning::value("KR_CUDA_MMA_GEMV")
        .as_deref()
        .map(str::trim)
    {
        Some("0") => usize::MAX,
        Some("1") => 1,
        _ => 2,
    }
}

/// The launches of `t` tokens: (first token, tokens) in groups of at most GEMV_MAX_ROWS (8,
/// the mma's n).
fn token_groups(t: usize) -> impl Iterator<Item = (usize, i32)> {
    (0..t)
        .step_by(GEMV_MAX_ROWS)
        .map(move |g| (g, (t - g).min(GEMV_MAX_ROWS) as i32))
}

/// Blocks for `rows` output rows.
fn blocks(rows: usize) -> cudarc::driver::LaunchConfig {
    grid1(rows / ROWS_PER_BLOCK, (32 * shape().warps) as u32)
}

impl CudaBackend {
    /// Whether steps of `t` tokens run their projections on tensor cores (where the shapes
    /// allow it).
    pub(super) fn mma_takes(&self, t: usize) -> bool {
        self.dtype == DType::Bf16
            && self.gpu.info.compute_capability.0 >= 8
            && (self.mma_gemv_min_tokens..=self.mma_gemv_max_tokens).contains(&t)
    }

    /// Whether `t` tokens of width `cols` times weights of `rows` rows run on tensor cores.
    fn mma_gemv_applies(&self, t: usize, cols: usize, rows: &[usize]) -> bool {
        self.mma_takes(t)
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
        let (wp, bp) = (w.ptr, bias.map_or(0u64, |b| b.buf.ptr));
        let (rows, cols) = (w.rows as i32, x.cols as i32);
        let acc = i32::from(accumulate);
        for (g, nt) in token_groups(x.rows) {
            let (yg, xp) = (self.row_ptr(y, g, w.rows), self.row_ptr(x.ptr, g, x.cols));
            launch!(
                self,
                "gemv_mma",
                blocks(w.rows),
                yg,
                xp,
                wp,
                bp,
                rows,
                cols,
                nt,
                acc
            );
        }
        true
    }

    /// The address of row `row` of a `? × cols` matrix of the compute type at `base`.
    fn row_ptr(&self, base: u64, row: usize, cols: usize) -> u64 {
        base + (row * cols * self.dtype.size()) as u64
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
        let (ys, [q, k, v, xp, wq, wk, wv, bq, bk, bv], [nq, nk, nv]) =
            self.qkv_outputs_and_args(x, w, bias);
        let cols = x.cols as i32;
        let cfg = blocks(rows.iter().sum());
        for (g, nt) in token_groups(x.rows) {
            let [qg, kg, vg] =
                [(q, rows[0]), (k, rows[1]), (v, rows[2])].map(|(p, n)| self.row_ptr(p, g, n));
            let xg = self.row_ptr(xp, g, x.cols);
            launch!(
                self,
                "gemv_mma_qkv",
                cfg,
                qg,
                kg,
                vg,
                xg,
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
        }
        Some(ys)
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
        let (wg, wu) = (w_gate.ptr, w_up.ptr);
        let (rows, cols) = (w_gate.rows as i32, x.cols as i32);
        let cfg = blocks(w_gate.rows);
        for (g, nt) in token_groups(x.rows) {
            let (yp, xp) = (
                self.row_ptr(y.ptr, g, w_gate.rows),
                self.row_ptr(x.ptr, g, x.cols),
            );
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
        }
        Some(y)
    }
}
