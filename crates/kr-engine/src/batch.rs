//! Turns a scheduler step plan into one packed model batch: token ids, attention metadata
//! and what each logits row is for.
//!
//! Invariant: the row uses of a batch are listed sequence after sequence, in plan order,
//! each sequence's prompt rows (ascending) before its sampled row, so the sampled rows come
//! in the order `Scheduler::update` expects. Every use but [`RowUse::Embed`] has its logits
//! row, in the same order as the uses.

use kr_core::{ScheduledSeq, StepPlan};
use kr_model::{AttnMeta, SeqAttn};
use std::ops::Range;

/// What one row of a batch's logits is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowUse {
    /// Sample the next token of `plan.seqs[i]`.
    Sample(usize),
    /// The distribution after position `pos` of `plan.seqs[seq]`'s prompt (prompt logprobs).
    Prompt { seq: usize, pos: usize },
    /// `plan.seqs[i]` is an embedding request whose prompt ends in this step: it takes a
    /// placeholder token and has no logits row (its output is pooled hidden states).
    Embed(usize),
}

/// What a sequence of the step wants besides its KV writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wanted {
    /// Prompt positions whose logits rows are wanted (prompt logprobs).
    pub prompt_rows: Range<usize>,
    /// An embedding request: its end of prompt samples nothing.
    pub embed: bool,
}

/// Packs the plan's tokens sequence after sequence and describes them for attention.
/// `wanted(s)` names the positions of `s` whose logits are wanted besides the sampled
/// one (clamped to the positions this step computes), and whether it is an embedding.
pub fn build_batch(
    plan: &StepPlan,
    block_size: usize,
    wanted: impl Fn(&ScheduledSeq) -> Wanted,
) -> (Vec<u32>, AttnMeta, Vec<RowUse>) {
    let n = plan.num_tokens();
    let mut ids = Vec::with_capacity(n);
    let mut uses = Vec::with_capacity(plan.num_sampled());
    let mut meta = AttnMeta {
        positions: Vec::with_capacity(n),
        slot_mapping: Vec::with_capacity(n),
        ..Default::default()
    };
    for (i, s) in plan.seqs.iter().enumerate() {
        let q_start = ids.len();
        for (j, &t) in s.tokens.iter().enumerate() {
            let pos = s.start + j;
            ids.push(t);
            meta.positions.push(pos as u32);
            meta.slot_mapping.push(
                s.block_table[pos / block_size] * block_size as u32 + (pos % block_size) as u32,
            );
        }
        meta.seqs.push(SeqAttn {
            q_start,
            q_len: s.tokens.len(),
            ctx_len: s.start + s.tokens.len(),
            block_table: s.block_table.clone(),
        });
        let w = wanted(s);
        let rows = &w.prompt_rows;
        for pos in rows.start.max(s.start)..rows.end.min(s.start + s.tokens.len()) {
            meta.logit_rows.push(q_start + pos - s.start);
            uses.push(RowUse::Prompt { seq: i, pos });
        }
        match (s.sample, w.embed) {
            (true, true) => uses.push(RowUse::Embed(i)),
            (true, false) => {
                meta.logit_rows.push(ids.len() - 1);
                uses.push(RowUse::Sample(i));
            }
            (false, _) => {}
        }
    }
    (ids, meta, uses)
}

/// A batch that recomputes the logits of positions `range` of one sequence whose keys and
/// values are already in the cache (a prefix-cache hit of a request that wants prompt
/// logprobs). Attention reads the cached keys through `block_table`; this batch's own keys
/// go to `scratch_block`, which no sequence owns and nothing reads, so the shared cached
/// blocks are never written.
pub fn replay_batch(
    tokens: &[u32],
    range: Range<usize>,
    block_table: &[u32],
    block_size: usize,
    scratch_block: u32,
) -> (Vec<u32>, AttnMeta) {
    let len = range.len();
    let base = scratch_block * block_size as u32;
    let meta = AttnMeta {
        positions: range.clone().map(|p| p as u32).collect(),
        slot_mapping: (0..len).map(|j| base + (j % block_size) as u32).collect(),
        seqs: vec![SeqAttn {
            q_start: 0,
            q_len: len,
            ctx_len: range.end,
            block_table: block_table.to_vec(),
        }],
        logit_rows: (0..len).collect(),
    };
    (tokens[range].to_vec(), meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_block_tables() {
        let plan = StepPlan {
            seqs: vec![
                ScheduledSeq {
                    id: 1,
                    start: 3,
                    tokens: vec![7, 8],
                    block_table: vec![5, 2],
                    sample: true,
                },
                ScheduledSeq {
                    id: 2,
                    start: 0,
                    tokens: vec![9],
                    block_table: vec![0],
                    sample: false,
                },
            ],
            preempted: vec![],
        };
        let (ids, meta, uses) = build_batch(&plan, 4, |_| Wanted::default());
        assert_eq!(ids, vec![7, 8, 9]);
        assert_eq!(meta.positions, vec![3, 4, 0]);
        assert_eq!(meta.slot_mapping, vec![5 * 4 + 3, 2 * 4, 0]);
        assert_eq!(meta.logit_rows, vec![1]);
        assert_eq!(uses, vec![RowUse::Sample(0)]);
        assert_eq!(meta.seqs[0].ctx_len, 5);
    }

    #[test]
    fn prompt_rows_come_before_the_sampled_row_and_are_clamped_to_the_chunk() {
        let plan = StepPlan {
            seqs: vec![
                ScheduledSeq {
                    id: 1,
                    start: 0,
                    tokens: vec![1, 2],
                    block_table: vec![0],
                    sample: false,
                },
                ScheduledSeq {
                    id: 2,
                    start: 4,
                    tokens: vec![5, 6, 7],
                    block_table: vec![1, 2],
                    sample: true,
                },
            ],
            preempted: vec![],
        };
        // Request 2 wants positions 2..6: only 4 and 5 are computed in this step.
        let (_, meta, uses) = build_batch(&plan, 4, |s| Wanted {
            prompt_rows: if s.id == 2 { 2..6 } else { 0..0 },
            embed: false,
        });
        assert_eq!(meta.logit_rows, vec![2, 3, 4]);
        assert_eq!(
            uses,
            vec![
                RowUse::Prompt { seq: 1, pos: 4 },
                RowUse::Prompt { seq: 1, pos: 5 },
                RowUse::Sample(1)
            ]
        );
    }

    #[test]
    fn an_embedding_end_of_prompt_has_no_logits_row() {
        let seq = |id, start| ScheduledSeq {
            id,
            start,
            tokens: vec![1, 2],
            block_table: vec![0, 1],
            sample: true,
        };
        let plan = StepPlan {
            seqs: vec![seq(1, 0), seq(2, 2)],
            preempted: vec![],
        };
        let (_, meta, uses) = build_batch(&plan, 4, |s| Wanted {
            prompt_rows: 0..0,
            embed: s.id == 1,
        });
        assert_eq!(meta.logit_rows, vec![3]);
        assert_eq!(uses, vec![RowUse::Embed(0), RowUse::Sample(1)]);
    }

    #[test]
    fn a_replay_reads_the_cache_and_writes_only_the_scratch_block() {
        let (ids, meta) = replay_batch(&[10, 11, 12, 13, 14, 15], 1..6, &[3, 4], 4, 9);
        assert_eq!(ids, vec![11, 12, 13, 14, 15]);
        assert_eq!(meta.positions, vec![1, 2, 3, 4, 5]);
        assert!(meta.slot_mapping.iter().all(|&s| (36..40).contains(&s)));
        assert_eq!(meta.seqs[0].ctx_len, 6);
        assert_eq!(meta.seqs[0].q_len, 5);
        assert_eq!(meta.logit_rows, vec![0, 1, 2, 3, 4]);
    }
}
