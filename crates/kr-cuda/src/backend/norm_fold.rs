//! Folded RMSNorms for decode steps: the norms before the q|k|v and gate|up projections run
//! inside those GEMVs instead of as kernels of their own (two kernel boundaries fewer per
//! layer). kr-model folds each norm's gain into the weights of the projections that read it
//! (`Backend::folds_norm_gains`), so what is left of the norm is `x / rms(x)`: one scale per
//! token on the projections' dot products. The kernels that write the residual stream (embed,
//! and the o / down GEMVs adding into it) also add up the squares of the values they write, per
//! token, into a slot of `norm_sums`; the next q|k|v or gate|up GEMV reads the slot and scales.
//!
//! Invariants:
//! - A tensor's `norm_sums` names a slot (non-zero) only while that slot holds the sums of
//!   squares of the tensor's current rows: embed and `linear_add` set it when their kernel
//!   filled the slot, every other write through `&mut CudaTensor` clears it, and its
//!   `norm_epoch` (the step's embed) must be the current one, so a tensor kept from an earlier
//!   step never reads slots that step's embed has since zeroed.
//! - Slots are handed out in call order from the step's embed, whose kernel writes slot 0 and
//!   zeroes the rest before any GEMV adds into them, so a step captured in a graph uses the same
//!   slots on every replay.
//! - Only steps whose projections run on the CUDA-core GEMV (at most NORM_SUM_TOKENS tokens, not
//!   taken by the tensor-core GEMV) use slots; elsewhere, with a gain that is not all ones, or
//!   with `KR_CUDA_FOLD_NORMS=0`, the norm runs as its own kernel.

use super::{per_row, CudaBackend, CudaTensor, CudaVector, CudaWeight};
use crate::error::driver;
use crate::tuning::switched_off;

/// Tokens a slot holds (NORM_SUM_TOKENS in kernels.cu; the GEMV's most tokens).
pub(super) const NORM_SUM_TOKENS: usize = super::GEMV_MAX_ROWS;
/// Slots per step: one for the embedding, then two per layer (o and down), so models of up to
/// 255 layers; a deeper model runs the rest of its norms as kernels.
pub(super) const NORM_SUM_SLOTS: usize = 512;
/// Bytes of the slot buffer (one f64 per slot and token).
pub(super) const NORM_SUMS_BYTES: usize = NORM_SUM_SLOTS * NORM_SUM_TOKENS * 8;

/// Which slots the current step has handed out.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct NormSlots {
    /// The step's token count, 0 while the step uses no slots.
    tokens: usize,
    /// The next free slot.
    next: usize,
    /// Counts the embeds that handed out slots; tags from earlier ones are stale.
    epoch: u64,
}

/// Whether folded norms are on: `KR_CUDA_FOLD_NORMS=0` turns them off (for comparison runs;
/// the gains stay folded into the weights, the norms run as kernels with gains of one).
pub(super) fn fold_norms_wanted() -> bool {
    !switched_off("KR_CUDA_FOLD_NORMS")
}

impl CudaBackend {
    fn norm_slot_ptr(&self, slot: usize) -> u64 {
        self.norm_sums.ptr + (slot * NORM_SUM_TOKENS * 8) as u64
    }

    /// No slots until the next embed hands them out (the step's start, or a step that does
    /// not fold).
    pub(super) fn disarm_norm_slots(&self) {
        let slots = self.norm_slots.get();
        self.norm_slots.set(NormSlots { tokens: 0, ..slots });
    }

    /// Whether a step of `t` tokens of width `cols` folds its norms.
    fn folds_norms_for(&self, t: usize, cols: usize) -> bool {
        self.fold_norms && t <= NORM_SUM_TOKENS && self.gemv_applies(t, cols) && !self.mma_takes(t)
    }

    /// The rows of `table` for `ids`: the step's first operation. Where the step folds its norms
    /// the kernel also starts the norm sums (slot 0 for the embedding rows, the rest zeroed).
    pub(super) fn embed_rows(&self, table: &CudaWeight, ids: &[u32]) -> CudaTensor {
        if table.quant.is_some() {
            self.disarm_norm_slots();
            return self.quant_embed(table, ids);
        }
        let mut out = self.alloc(ids.len(), table.cols);
        let (o, t, idp, cols) = (
            out.ptr,
            table.ptr,
            self.meta_ptr(self.meta_layout.offsets().ids),
            table.cols as i32,
        );
        if !self.folds_norms_for(ids.len(), table.cols) {
            self.disarm_norm_slots();
            launch!(self, "embed", per_row(ids.len()), o, t, idp, cols);
            return out;
        }
        let (sums, slots) = (self.norm_slot_ptr(0), NORM_SUM_SLOTS as i32);
        launch!(
            self,
            "embed_norm_sums",
            per_row(ids.len()),
            o,
            t,
            idp,
            cols,
            sums,
            slots
        );
        let epoch = self.norm_slots.get().epoch + 1;
        self.norm_slots.set(NormSlots {
            tokens: ids.len(),
            next: 1,
            epoch,
        });
        (out.norm_sums, out.norm_epoch) = (sums, epoch);
        out
    }

    /// `x += a · Wᵀ` on the CUDA-core GEMV adding the squares of the new rows into the step's
    /// next slot; false (nothing launched) where the step does not fold norms.
    pub(super) fn linear_add_summing(
        &self,
        x: &mut CudaTensor,
        a: &CudaTensor,
        w: &CudaWeight,
    ) -> bool {
        let slots = self.norm_slots.get();
        // Armed slots mean the step's embed passed `folds_norms_for`; only `a`'s width is new.
        let fits = slots.tokens == a.rows
            && slots.next < NORM_SUM_SLOTS
            && w.cols == a.cols
            && w.quant.is_none();
        if !fits || !self.gemv_applies(a.rows, a.cols) {
            return false;
        }
        let sums = self.norm_slot_ptr(slots.next);
        self.norm_slots.set(NormSlots {
            next: slots.next + 1,
            ..slots
        });
        self.gemv(x.ptr, a, w, None, true, sums);
        (x.norm_sums, x.norm_epoch) = (sums, slots.epoch);
        true
    }

    /// The norm's scale for `x` where it can be folded into the next GEMV (the `norm` of
    /// `fused_qkv` / `fused_gate_up`): its slot and `eps`.
    pub(super) fn folded_norm(
        &self,
        x: &CudaTensor,
        gain: &CudaVector,
        eps: f32,
    ) -> Option<(u64, f32)> {
        let slots = self.norm_slots.get();
        let current = slots.tokens == x.rows && slots.epoch == x.norm_epoch;
        (gain.unit && x.norm_sums != 0 && current).then_some((x.norm_sums, eps))
    }
}

/// The kernels' `sums` and `eps` arguments for an optional folded norm (0: none).
pub(super) fn norm_args(norm: Option<(u64, f32)>) -> (u64, f32) {
    norm.unwrap_or((0, 0.0))
}

// kernels.cu hard-codes the slot stride: a change to one side must fail the build.
const _: () = assert!(NORM_SUM_TOKENS == 8, "kernels.cu's NORM_SUM_TOKENS is 8");
