//! Mixture-of-Experts blocks routed on the device (`kernels/moe.cu`): the router's logits
//! never leave the GPU, so a step of an expert model makes no round trip to the host and CUDA
//! graphs replay its decode steps. `moe_topk` picks each token's experts and weights,
//! `moe_gate_up` runs every (token, chosen expert) pair's gate and up rows as GEMV warps
//! through a table of expert weight pointers, and `moe_down` adds each token's weighted expert
//! outputs into its residual row, summing the slots in order (no atomics).
//!
//! Off unless `KR_CUDA_MOE_DEVICE=1`: these kernels have not yet run on a GPU, and host
//! routing has (the families GPU test); the switch goes once they pass there.
//!
//! Invariants: a table exists only for unquantised experts that all share one shape, whose
//! rows are whole 16-byte vectors, at most MOE_MAX_EXPERTS of them, with 1..=MOE_MAX_TOPK
//! chosen per token (fewer than the experts); otherwise the decoder routes on the host. The
//! table holds the gate pointers, then the up, then the down ones.

use super::{grid1, CudaBackend, CudaTensor, CudaWeight};
use crate::device::DeviceBuffer;
use crate::error::driver;
use cudarc::driver::LaunchConfig;

/// Most experts a block may have (MOE_MAX_EXPERTS) and most chosen per token (MOE_MAX_TOPK).
const MAX_EXPERTS: usize = 256;
const MAX_TOP_K: usize = 16;

/// The kernels, each compiled for f32 and bf16.
pub const MOE_KERNELS: [&str; 3] = ["moe_topk", "moe_gate_up", "moe_down"];

/// One block's experts on the device: their weight pointers and shape.
pub struct CudaExperts {
    table: DeviceBuffer,
    count: usize,
    /// Rows of gate and up, columns of down.
    ff: usize,
    /// Columns of gate and up, rows of down.
    hidden: usize,
}

/// Blocks of 8 warps, one row each: `pairs` along x (past the y limit of 65,535 in long
/// prefill steps), `rows / 8` along y.
fn rows_by_pairs(rows: usize, pairs: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (pairs as u32, rows.div_ceil(8) as u32, 1),
        ..grid1(1, 256)
    }
}

impl CudaBackend {
    /// The table of `experts`, or `None` where the kernels do not take them (see the module's
    /// invariants); an upload that fails is recorded as the step error and gives `None`.
    pub(super) fn experts_table(
        &self,
        experts: &[[CudaWeight; 3]],
        top_k: usize,
    ) -> Option<CudaExperts> {
        if !crate::tuning::switched_on("KR_CUDA_MOE_DEVICE") {
            return None;
        }
        let [g, _, d] = experts.first()?;
        if top_k == 0 || top_k > MAX_TOP_K.min(experts.len()) {
            return None;
        }
        let (ff, hidden) = (g.rows, g.cols);
        let vector = 16 / self.dtype.size();
        let same = experts.iter().all(|[g, u, d]| {
            [g, u, d].iter().all(|w| w.quant.is_none())
                && (g.rows, g.cols, u.rows, u.cols, d.rows, d.cols)
                    == (ff, hidden, ff, hidden, hidden, ff)
        });
        let fits = hidden % vector == 0 && ff % vector == 0 && d.rows == hidden;
        if !same || !fits || experts.len() > MAX_EXPERTS {
            return None;
        }
        let ptrs: Vec<u64> = (0..3)
            .flat_map(|m| experts.iter().map(move |e| e[m].ptr))
            .collect();
        Some(CudaExperts {
            table: self.upload_recorded(&ptrs)?,
            count: experts.len(),
            ff,
            hidden,
        })
    }

    /// `x += Σ_j p_j · down_j(silu(gate_j(h)) * up_j(h))` over each row's `top_k` experts by
    /// `logits` (see `kr_model::Backend::experts_add`).
    pub(super) fn experts_add_routed(
        &self,
        x: &mut CudaTensor,
        h: &CudaTensor,
        logits: &CudaTensor,
        experts: &CudaExperts,
        (top_k, norm_topk_prob): (usize, bool),
    ) {
        x.norm_sums = 0;
        let (tokens, k) = (h.rows, top_k);
        if tokens == 0 {
            return;
        }
        let pairs = tokens * k;
        // Expert ids (i32) and weights (f32) of each pair, then the pairs' activations.
        let choice = self.alloc_elems(pairs, 2, 4);
        let act = self.alloc(pairs, experts.ff);
        let (ids, probs) = (choice.ptr, choice.ptr + 4 * pairs as u64);
        let (lp, hp, xp, ap, tp) = (logits.ptr, h.ptr, x.ptr, act.ptr, experts.table.ptr);
        let (n, ki, norm, nt) = (
            experts.count as i32,
            k as i32,
            i32::from(norm_topk_prob),
            tokens as i32,
        );
        let (hidden, ff) = (experts.hidden as i32, experts.ff as i32);
        launch!(
            self,
            "moe_topk",
            grid1(tokens.div_ceil(8), 256),
            lp,
            n,
            ki,
            norm,
            ids,
            probs,
            nt
        );
        let cfg = rows_by_pairs(experts.ff, pairs);
        launch!(self, "moe_gate_up", cfg, hp, tp, ids, ap, hidden, ff, ki, n);
        let cfg = rows_by_pairs(experts.hidden, tokens);
        launch!(self, "moe_down", cfg, xp, ap, tp, ids, probs, hidden, ff, ki, n);
    }
}
