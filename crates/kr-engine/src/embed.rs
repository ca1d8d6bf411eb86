//! Embedding requests: a prompt runs through the model like any prefill (same scheduler,
//! same batches, chunked and prefix-cached like a generation's), but its output is the
//! pooled, final-normed hidden state instead of a sampled token.
//!
//! Invariants:
//! - an embedding sequence is scheduled with `max_tokens` 1; the step that ends its prompt
//!   gives it a placeholder token and no logits row ([`RowUse::Embed`]), and the engine
//!   sends [`crate::Event::Embedding`] instead of that token;
//! - every prompt position the pooling reads is pooled exactly once, in order: positions
//!   served from the prefix cache are recomputed from the cached keys into the scratch
//!   block (as prompt logprobs are), before the step's own rows;
//! - steps with embedding rows run on the host path (`Runner::forward_with_hidden`), never
//!   sampled on the device nor overlapped.

use super::EngineLoop;
use crate::batch::{replay_batch, RowUse};
use crate::handle::{Event, Usage};
use kr_core::{RequestId, StepPlan};
use kr_model::AttnMeta;
use std::sync::atomic::Ordering::Relaxed;

/// How the hidden states of a prompt become one vector (the model's pooling; Hugging Face
/// sentence-transformers' `1_Pooling/config.json`, GGUF's `{arch}.pooling_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// The last token's state (decoder embedding models such as Qwen3-Embedding).
    #[default]
    Last,
    /// The mean over every prompt token.
    Mean,
    /// The first token's state (BERT's CLS).
    First,
}

impl Pooling {
    /// `last`, `mean` or `first` (also `cls`).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "last" | "lasttoken" => Some(Self::Last),
            "mean" => Some(Self::Mean),
            "first" | "cls" => Some(Self::First),
            _ => None,
        }
    }
}

/// The pooling state of one embedding request.
pub(crate) struct EmbedState {
    pooling: Pooling,
    prompt_len: usize,
    /// First prompt position not pooled yet (positions arrive in order).
    next: usize,
    sum: Vec<f32>,
    rows: usize,
}

impl EmbedState {
    pub(crate) fn new(pooling: Pooling, prompt_len: usize) -> Self {
        Self {
            pooling,
            prompt_len,
            next: 0,
            sum: Vec::new(),
            rows: 0,
        }
    }

    pub(crate) fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Whether the pooling reads the hidden state of prompt position `pos`.
    fn reads(&self, pos: usize) -> bool {
        match self.pooling {
            Pooling::Last => pos + 1 == self.prompt_len,
            Pooling::Mean => pos < self.prompt_len,
            Pooling::First => pos == 0,
        }
    }

    /// Positions of `range` still to pool.
    fn unpooled(&self, range: std::ops::Range<usize>) -> impl Iterator<Item = usize> + '_ {
        range.filter(move |&p| p >= self.next && self.reads(p))
    }

    fn add(&mut self, pos: usize, row: &[f32]) {
        if self.sum.is_empty() {
            self.sum = vec![0.0; row.len()];
        }
        for (s, &v) in self.sum.iter_mut().zip(row) {
            *s += v;
        }
        self.rows += 1;
        self.next = pos + 1;
    }

    /// The pooled vector, L2-normalised (all zeros stay zeros).
    pub(crate) fn finish(self) -> Vec<f32> {
        let n = self.rows.max(1) as f32;
        let mut v: Vec<f32> = self.sum.into_iter().map(|s| s / n).collect();
        normalize(&mut v);
        v
    }
}

/// Scales `v` to unit L2 norm (a zero vector is left as it is).
pub fn normalize(v: &mut [f32]) {
    let norm = v
        .iter()
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        .sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x = (*x as f64 / norm) as f32);
    }
}

/// One hidden row of a batch that an embedding request pools.
pub(crate) struct HiddenRow {
    pub row: usize,
    /// Index into the plan's sequences.
    pub seq: usize,
    pub pos: usize,
}

impl EngineLoop {
    /// The rows of this step's batch whose hidden states embedding requests pool.
    pub(super) fn hidden_rows(&self, plan: &StepPlan, meta: &AttnMeta) -> Vec<HiddenRow> {
        let mut out = Vec::new();
        for (i, s) in plan.seqs.iter().enumerate() {
            let Some(e) = self.live.get(&s.id).and_then(|l| l.embed.as_ref()) else {
                continue;
            };
            let q_start = meta.seqs[i].q_start;
            for pos in e.unpooled(s.start..s.start + s.tokens.len()) {
                out.push(HiddenRow {
                    row: q_start + pos - s.start,
                    seq: i,
                    pos,
                });
            }
        }
        out
    }

    /// Adds the hidden states `hidden` (`[rows.len(), hidden_size]`) to their requests.
    pub(super) fn pool_rows(&mut self, plan: &StepPlan, rows: &[HiddenRow], hidden: &[f32]) {
        let width = self.runner.config().hidden_size;
        for (r, h) in rows.iter().zip(hidden.chunks_exact(width)) {
            if let Some(e) = self
                .live
                .get_mut(&plan.seqs[r.seq].id)
                .and_then(|l| l.embed.as_mut())
            {
                e.add(r.pos, h);
            }
        }
    }

    /// Ends embedding request `id` (its prompt has run): sends its pooled vector.
    pub(super) fn finish_embedding(&mut self, id: RequestId) {
        self.sched.finish(id);
        let Some(live) = self.live.remove(&id) else {
            return;
        };
        let usage = Usage {
            prompt_tokens: live.prompt_len,
            completion_tokens: 0,
            cached_prompt_tokens: live.cached_prompt_tokens,
        };
        if let Some(e) = live.embed {
            let vector = e.finish();
            let _ = live.events.send(Event::Embedding { vector, usage });
        }
        self.stats.requests_finished.fetch_add(1, Relaxed);
    }

    /// Pools the prompt positions a prefix-cache hit skipped (recomputed from the cached keys
    /// into the scratch block, at most `max_num_batched_tokens` rows per forward).
    pub(super) fn replay_embed_gaps(&mut self, plan: &StepPlan) {
        let bs = self.sched.config().block_size;
        let piece = self.sched.config().max_num_batched_tokens.max(1);
        for s in &plan.seqs {
            let Some(live) = self.live.get_mut(&s.id) else {
                continue;
            };
            let super::RequestState {
                embed: Some(e),
                ids: tokens,
                ..
            } = live
            else {
                continue;
            };
            let mut from = e.next;
            while e.unpooled(from..s.start).next().is_some() {
                let to = (from + piece).min(s.start);
                let (ids, mut meta) =
                    replay_batch(tokens, from..to, &s.block_table, bs, self.scratch_block);
                meta.logit_rows.clear();
                let wanted: Vec<usize> = e.unpooled(from..to).collect();
                let rows: Vec<usize> = wanted.iter().map(|p| p - from).collect();
                let Ok((_, hidden)) = self.runner.forward_with_hidden(&ids, &meta, &rows) else {
                    return; // the step that follows fails the same way and reports it
                };
                let width = hidden.len() / rows.len().max(1);
                for (&pos, h) in wanted.iter().zip(hidden.chunks_exact(width.max(1))) {
                    e.add(pos, h);
                }
                from = to;
            }
        }
    }
}

/// Whether a batch's rows include an embedding request's end of prompt.
pub(crate) fn has_embed_rows(uses: &[RowUse]) -> bool {
    uses.iter().any(|u| matches!(u, RowUse::Embed(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_pooling_averages_then_normalises() {
        let mut e = EmbedState::new(Pooling::Mean, 2);
        assert!(e.reads(0) && e.reads(1));
        e.add(0, &[1.0, 0.0]);
        e.add(1, &[3.0, 4.0]);
        let v = e.finish();
        // mean (2, 2) → (1/√2, 1/√2)
        assert!((v[0] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
        assert!((v[1] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
    }

    #[test]
    fn last_and_first_pooling_read_one_position() {
        let e = EmbedState::new(Pooling::Last, 5);
        assert_eq!(e.unpooled(0..5).collect::<Vec<_>>(), vec![4]);
        let f = EmbedState::new(Pooling::First, 5);
        assert_eq!(f.unpooled(0..5).collect::<Vec<_>>(), vec![0]);
        assert_eq!(f.unpooled(1..5).count(), 0);
    }

    #[test]
    fn pooled_positions_are_not_pooled_again() {
        let mut e = EmbedState::new(Pooling::Mean, 4);
        e.add(0, &[1.0]);
        e.add(1, &[1.0]);
        assert_eq!(e.unpooled(0..4).collect::<Vec<_>>(), vec![2, 3]);
    }

    #[test]
    fn a_zero_vector_stays_zero() {
        let mut v = vec![0.0f32; 3];
        normalize(&mut v);
        assert_eq!(v, vec![0.0; 3]);
    }

    #[test]
    fn pooling_names_parse() {
        assert_eq!(Pooling::parse("CLS"), Some(Pooling::First));
        assert_eq!(Pooling::parse("mean"), Some(Pooling::Mean));
        assert_eq!(Pooling::parse("max"), None);
    }
}
