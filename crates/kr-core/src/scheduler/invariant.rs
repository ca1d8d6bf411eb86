//! Batch-invariant step composition (`SchedulerConfig::batch_invariant`): what a sequence
//! computes must not depend on what runs beside it, so that its greedy tokens are the same
//! alone and in a busy server. Backends compute a row the same way for any number of rows in
//! a decode step (see the CUDA backend's batch-invariant mode), but a prefill's products
//! change with the step's token count; so the scheduler keeps every prefill chunk the same
//! whatever else waits:
//! - a step is either the decode tokens of the decoding sequences (each has sampled before and
//!   has one token to compute), or one sequence's prefill chunk, never both;
//! - a sequence's chunks are `[kC, min((k + 1)C, len))` with C = `max_num_batched_tokens`:
//!   prefix-cache hits are cut to a multiple of C (`Scheduler::match_prefix`);
//! - while both kinds have work, decode and prefill steps alternate, so decoding sequences wait
//!   at most one chunk between tokens.
//!
//! Preemption recomputes a sequence's generated tokens as a prefill, which is not invariant;
//! a KV cache large enough for the batch avoids it.

use super::{RequestId, Scheduler, StepPlan};
use std::time::Duration;

impl Scheduler {
    /// The batch-invariant counterpart of `schedule_at`.
    pub(super) fn schedule_invariant(&mut self, now: Duration, admit: bool) -> StepPlan {
        let mut plan = StepPlan::default();
        let any_decoding = self.running.iter().any(|&id| self.decoding(id));
        let decoded = if self.last_step_decoded || !any_decoding {
            self.plan_chunk(&mut plan, now, admit);
            plan.seqs.is_empty() && self.plan_decodes(&mut plan)
        } else {
            self.plan_decodes(&mut plan) || {
                self.plan_chunk(&mut plan, now, admit);
                false
            }
        };
        self.last_step_decoded = decoded;
        plan
    }

    /// Whether running request `id` is decoding: it has sampled a token and that token is the
    /// only one left to compute.
    fn decoding(&self, id: RequestId) -> bool {
        let s = &self.seqs[&id];
        s.tokens.len() - s.num_computed == 1 && s.num_output() > 0
    }

    /// Tokens of `id`'s next prefill chunk: up to the next multiple of the chunk size.
    fn chunk_len(&self, id: RequestId) -> usize {
        let c = self.cfg.max_num_batched_tokens;
        let s = &self.seqs[&id];
        (s.tokens.len() - s.num_computed).min(c - s.num_computed % c)
    }

    /// One prefill chunk: of the first running request that is not decoding, else of the
    /// waiting request to start next. Plans nothing when neither can go.
    fn plan_chunk(&mut self, plan: &mut StepPlan, now: Duration, admit: bool) {
        let prefilling = self.running.iter().copied().find(|&id| !self.decoding(id));
        if let Some(id) = prefilling {
            let n = self.chunk_len(id);
            if self.allocate_or_preempt(plan, id, n) {
                plan.seqs.push(self.scheduled(id, n));
            }
            return;
        }
        if !admit || !plan.preempted.is_empty() || self.running.len() >= self.max_running {
            return;
        }
        let Some(pos) = self.next_waiting(now) else {
            return;
        };
        self.start_waiting(plan, pos, Self::chunk_len);
    }

    /// One token of each decoding request, in running order, up to the token budget; true
    /// when any was planned.
    fn plan_decodes(&mut self, plan: &mut StepPlan) -> bool {
        let budget = self.cfg.max_num_batched_tokens;
        let ids: Vec<RequestId> = self
            .running
            .iter()
            .copied()
            .filter(|&id| self.decoding(id))
            .take(budget)
            .collect();
        for id in ids {
            // A request preempted for an earlier one is gone from `running`.
            if !self.running.contains(&id) {
                continue;
            }
            if !self.allocate_or_preempt(plan, id, 1) {
                break;
            }
            plan.seqs.push(self.scheduled(id, 1));
        }
        !plan.seqs.is_empty()
    }
}
