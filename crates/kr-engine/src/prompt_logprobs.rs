//! Prompt logprobs: a request that asks for them gets a logit row for every prompt position,
//! gathered as its prefill chunks run; positions a prefix-cache hit skipped are recomputed
//! from the cached keys into the scratch block no sequence owns, before the step's own batch.
//! All rows are sent with the request's first token.

use super::{EngineLoop, RequestState};
use crate::batch::replay_batch;
use crate::sampler::{token_logprobs, TokenLogprobs};
use kr_core::{ScheduledSeq, StepPlan};
use std::ops::Range;

/// The prompt logprobs of one request, filled row by row as prefill chunks run.
pub(super) struct PromptLogprobs {
    /// Alternatives per position.
    pub(super) top_n: usize,
    /// First prompt position whose row is still missing (rows arrive in order).
    pub(super) next: usize,
    /// `rows[p + 1]`: logprob of prompt token `p + 1` given tokens `0..=p`; `rows[0]` None.
    pub(super) rows: Vec<Option<TokenLogprobs>>,
}

impl RequestState {
    /// Positions of `s`'s chunk whose logits the prompt logprobs still need.
    pub(super) fn prompt_rows(&self, s: &ScheduledSeq) -> Range<usize> {
        match &self.prompt_lp {
            Some(p) => s.start.max(p.next)..(s.start + s.tokens.len()).min(self.prompt_len - 1),
            None => 0..0,
        }
    }

    /// Records the logits row of prompt position `pos` (which predicts token `pos + 1`).
    pub(super) fn record_prompt_row(&mut self, pos: usize, row: &[f32]) {
        if let Some(p) = &mut self.prompt_lp {
            if let Some(&next) = self.ids.get(pos + 1).filter(|_| pos + 1 < self.prompt_len) {
                p.rows[pos + 1] = Some(token_logprobs(row, next, p.top_n));
                p.next = p.next.max(pos + 1);
            }
        }
    }
}

impl EngineLoop {
    /// Prompt logprobs need a row for every prompt position, but a prefix-cache hit skips
    /// the cached positions: recompute their rows from the cached keys (at most
    /// `max_num_batched_tokens` rows per forward), before this step's own batch.
    pub(super) fn replay_prompt_gaps(&mut self, plan: &StepPlan) {
        let bs = self.sched.config().block_size;
        let piece = self.sched.config().max_num_batched_tokens.max(1);
        for s in &plan.seqs {
            let Some(live) = self.live.get_mut(&s.id) else {
                continue;
            };
            let Some(p) = &live.prompt_lp else { continue };
            let end = s.start.min(live.prompt_len - 1);
            let mut from = p.next;
            while from < end {
                let to = (from + piece).min(end);
                let (ids, meta) =
                    replay_batch(&live.ids, from..to, &s.block_table, bs, self.scratch_block);
                let Ok(logits) = self.runner.forward(&ids, &meta) else {
                    return; // the step that follows fails the same way and reports it
                };
                let vocab = self.vocab_size;
                for (j, row) in logits.chunks_exact(vocab).enumerate() {
                    live.record_prompt_row(from + j, row);
                }
                from = to;
            }
        }
    }
}
