//! Steps whose tokens are chosen on the GPU: which steps qualify, each row's sampling
//! parameters (a uniform number drawn from the request's own generator, and its grammar's mask
//! of allowed tokens), and the chosen tokens recorded back in the requests' samplers.
//!
//! Invariants: a step qualifies only when every row is a sampled decode row of a request
//! whose sampler needs nothing on the host; checking draws nothing, so a step that does not
//! go ahead leaves every generator untouched; a request held to a grammar never goes in a step
//! launched ahead (its mask needs the token of the step in flight).

use super::{EngineLoop, RequestState};
use crate::batch::RowUse;
use crate::sampler::TokenLogprobs;
use kr_core::{RequestId, StepPlan};
use kr_model::RowSampling;
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;

impl EngineLoop {
    /// The requests of `plan`'s rows (in plan order) when the whole step can sample on the
    /// device: a GPU, no prompt-logprob or embedding rows, and no request that needs its
    /// logits on the host; with `ahead`, no request held to a grammar either.
    pub(super) fn device_rows(
        &self,
        plan: &StepPlan,
        rows: &[RowUse],
        ahead: bool,
    ) -> Option<Vec<RequestId>> {
        if !self.runner.samples_on_device() {
            return None;
        }
        let mut seqs = Vec::with_capacity(rows.len());
        for u in rows {
            match *u {
                RowUse::Sample(i) => seqs.push(plan.seqs[i].id),
                RowUse::Prompt { .. } | RowUse::Embed(_) => return None,
            }
        }
        let ready =
            |l: &RequestState| l.sampler.device_samplable() && !(ahead && l.sampler.constrained());
        seqs.iter()
            .all(|id| self.live.get(id).is_some_and(ready))
            .then_some(seqs)
    }

    /// Whether any of `seqs` is held to a grammar.
    pub(super) fn any_constrained(&self, seqs: &[RequestId]) -> bool {
        seqs.iter()
            .any(|id| self.live.get(id).is_some_and(|l| l.sampler.constrained()))
    }

    /// Records the tokens the device chose (plan order) in each request's sampler. Counts
    /// only tokens of live requests (an overlapped step's row of a request that has just
    /// ended is dropped).
    pub(super) fn record_device_tokens(
        &mut self,
        plan: &StepPlan,
        rows: &[RowUse],
        tokens: Vec<u32>,
    ) -> (Vec<u32>, Vec<Option<TokenLogprobs>>) {
        let mut used = 0;
        for (u, &tok) in rows.iter().zip(&tokens) {
            if let RowUse::Sample(i) = *u {
                if let Some(l) = self.live.get_mut(&plan.seqs[i].id) {
                    l.sampler.record(tok);
                    used += 1;
                }
            }
        }
        self.stats.device_sampled_tokens.fetch_add(used, Relaxed);
        let none = vec![None; tokens.len()];
        (tokens, none)
    }
}

/// Each of `seqs`' device parameters over `vocab` logits, drawing its uniform number and
/// waiting for its grammar's mask (see [`crate::sampler::Sampler::device_draw`]).
pub(super) fn draw(
    live: &mut HashMap<RequestId, RequestState>,
    seqs: &[RequestId],
    vocab: usize,
) -> Vec<RowSampling> {
    seqs.iter()
        .filter_map(|id| live.get_mut(id).map(|l| l.sampler.device_draw(vocab)))
        .collect()
}
