//! Step metadata on the device: token ids, positions, KV slots, per-sequence attention data
//! and block tables, packed into one fixed layout so that kernels (and captured CUDA graphs)
//! always read them at the same addresses. Also: padding a decode batch up to a graph bucket.
//!
//! Invariants: field offsets depend only on the capacities, never on a step; a padding token
//! has slot [`NO_SLOT`] (nothing is written to the cache) and a padding sequence has
//! `ctx_len == 0`; block tables have a fixed row stride.

use crate::error::{CudaError, Result};
use kr_model::{AttnMeta, SeqAttn};

/// Slot of a padding token: the kernels write nothing to the KV cache for it.
pub const NO_SLOT: u32 = u32::MAX;
/// Query rows one attention block computes (tokens of a tile × query heads per kv head).
pub const ATTENTION_ROWS: usize = 64;

/// Capacities of the metadata buffer and the offset (in u32 words) of each field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaLayout {
    pub max_tokens: usize,
    pub max_seqs: usize,
    pub bt_stride: usize,
    pub max_work: usize,
}

/// Field offsets, in u32 words from the start of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaOffsets {
    pub ids: usize,
    pub positions: usize,
    pub slots: usize,
    pub logit_rows: usize,
    pub q_start: usize,
    pub q_len: usize,
    pub ctx_len: usize,
    pub work: usize,
    pub block_tables: usize,
    pub total: usize,
}

impl MetaLayout {
    pub fn new(max_tokens: usize, max_seqs: usize, bt_stride: usize) -> Self {
        Self {
            max_tokens,
            max_seqs,
            bt_stride,
            max_work: max_seqs + max_tokens,
        }
    }

    pub fn offsets(&self) -> MetaOffsets {
        let (t, s) = (self.max_tokens, self.max_seqs);
        let ids = 0;
        let positions = ids + t;
        let slots = positions + t;
        let logit_rows = slots + t;
        let q_start = logit_rows + s;
        let q_len = q_start + s;
        let ctx_len = q_len + s;
        let work = ctx_len + s;
        let block_tables = work + 2 * self.max_work;
        MetaOffsets {
            ids,
            positions,
            slots,
            logit_rows,
            q_start,
            q_len,
            ctx_len,
            work,
            block_tables,
            total: block_tables + s * self.bt_stride,
        }
    }
}

/// Sizes of one packed step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StepCounts {
    pub tokens: usize,
    pub seqs: usize,
    pub work: usize,
    pub logit_rows: usize,
    /// Every sequence has exactly one query token (the decode attention kernel applies).
    pub decode: bool,
    /// A decode step with a context past [`LONG_DECODE_CONTEXT`]: its attention splits each
    /// sequence's keys over as many blocks as the context needs (see `backend::attention`).
    pub long_decode: bool,
}

/// Contexts up to this many keys decode with at most 8 splits merged in a cluster; longer
/// ones with up to 64 splits merged through global memory. Graphs are captured per bucket and
/// per side of this line, so a replay never uses the other kernel.
pub const LONG_DECODE_CONTEXT: usize = 1024;

/// Whether a step is a long-context decode step (see [`StepCounts::long_decode`]).
pub fn is_long_decode(meta: &AttnMeta) -> bool {
    meta.seqs.iter().all(|s| s.q_len == 1)
        && meta.seqs.iter().any(|s| s.ctx_len > LONG_DECODE_CONTEXT)
}

/// Query tokens per attention tile when `group` query heads share a kv head.
pub fn tile_q(group: usize) -> usize {
    (ATTENTION_ROWS / group.max(1)).max(1)
}

/// Writes the step into `buf` (at least `layout.offsets().total` words) and returns its sizes.
/// Only the ranges listed by [`used_ranges`] are meaningful afterwards.
pub fn pack(
    buf: &mut [u32],
    layout: &MetaLayout,
    ids: &[u32],
    meta: &AttnMeta,
    tile: usize,
) -> Result<StepCounts> {
    let o = layout.offsets();
    let too_big = |what: &str, n: usize, cap: usize| {
        CudaError::Unsupported(format!(
            "a step with {n} {what} (the GPU metadata buffer holds {cap})"
        ))
    };
    let (n, s) = (ids.len(), meta.seqs.len());
    if n > layout.max_tokens {
        return Err(too_big("tokens", n, layout.max_tokens));
    }
    if s > layout.max_seqs || meta.logit_rows.len() > layout.max_seqs {
        return Err(too_big("sequences", s, layout.max_seqs));
    }
    buf[o.ids..o.ids + n].copy_from_slice(ids);
    buf[o.positions..o.positions + n].copy_from_slice(&meta.positions);
    buf[o.slots..o.slots + n].copy_from_slice(&meta.slot_mapping);
    for (i, &r) in meta.logit_rows.iter().enumerate() {
        buf[o.logit_rows + i] = r as u32;
    }
    let mut work = 0;
    for (i, seq) in meta.seqs.iter().enumerate() {
        if seq.block_table.len() > layout.bt_stride {
            return Err(too_big(
                "blocks in one sequence",
                seq.block_table.len(),
                layout.bt_stride,
            ));
        }
        buf[o.q_start + i] = seq.q_start as u32;
        buf[o.q_len + i] = seq.q_len as u32;
        buf[o.ctx_len + i] = seq.ctx_len as u32;
        let bt = o.block_tables + i * layout.bt_stride;
        buf[bt..bt + seq.block_table.len()].copy_from_slice(&seq.block_table);
        // A padding sequence (q_len 0) still gets one work item so the grid stays fixed.
        for q0 in (0..seq.q_len.max(1)).step_by(tile) {
            if work >= layout.max_work {
                return Err(too_big("attention tiles", work + 1, layout.max_work));
            }
            buf[o.work + 2 * work] = i as u32;
            buf[o.work + 2 * work + 1] = q0 as u32;
            work += 1;
        }
    }
    Ok(StepCounts {
        tokens: n,
        seqs: s,
        work,
        logit_rows: meta.logit_rows.len(),
        decode: meta.seqs.iter().all(|s| s.q_len == 1),
        long_decode: is_long_decode(meta),
    })
}

/// The `(offset, len)` word ranges of `buf` that a step of `c` fills (what must be copied).
pub fn used_ranges(layout: &MetaLayout, c: &StepCounts) -> [(usize, usize); 9] {
    let o = layout.offsets();
    [
        (o.ids, c.tokens),
        (o.positions, c.tokens),
        (o.slots, c.tokens),
        (o.logit_rows, c.logit_rows),
        (o.q_start, c.seqs),
        (o.q_len, c.seqs),
        (o.ctx_len, c.seqs),
        (o.work, 2 * c.work),
        (o.block_tables, c.seqs * layout.bt_stride),
    ]
}

/// True when every sequence decodes one token and samples it: the shape graphs replay.
pub fn is_pure_decode(meta: &AttnMeta) -> bool {
    !meta.seqs.is_empty()
        && meta.seqs.iter().all(|s| s.q_len == 1)
        && meta.logit_rows.len() == meta.seqs.len()
}

/// Pads a pure-decode batch to `bucket` sequences with sequences that write nothing and attend
/// to nothing, so that one captured graph serves every batch size up to `bucket`.
pub fn pad_decode(ids: &[u32], meta: &AttnMeta, bucket: usize) -> (Vec<u32>, AttnMeta) {
    let mut ids = ids.to_vec();
    let mut meta = meta.clone();
    while ids.len() < bucket {
        let row = ids.len();
        ids.push(0);
        meta.positions.push(0);
        meta.slot_mapping.push(NO_SLOT);
        meta.seqs.push(SeqAttn {
            q_start: row,
            q_len: 1,
            ctx_len: 0,
            block_table: Vec::new(),
        });
        meta.logit_rows.push(row);
    }
    (ids, meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> (Vec<u32>, AttnMeta) {
        let seqs = vec![
            SeqAttn {
                q_start: 0,
                q_len: 3,
                ctx_len: 5,
                block_table: vec![4, 1],
            },
            SeqAttn {
                q_start: 3,
                q_len: 1,
                ctx_len: 9,
                block_table: vec![0, 2, 3],
            },
        ];
        let meta = AttnMeta {
            positions: vec![2, 3, 4, 8],
            slot_mapping: vec![18, 19, 4, 48],
            seqs,
            logit_rows: vec![2, 3],
        };
        (vec![10, 11, 12, 13], meta)
    }

    #[test]
    fn fields_land_at_fixed_offsets() {
        let layout = MetaLayout::new(8, 4, 4);
        let o = layout.offsets();
        let mut buf = vec![0u32; o.total];
        let (ids, m) = meta();
        let c = pack(&mut buf, &layout, &ids, &m, 2).unwrap();
        assert_eq!(
            c,
            StepCounts {
                tokens: 4,
                seqs: 2,
                work: 3,
                logit_rows: 2,
                decode: false,
                long_decode: false
            }
        );
        assert_eq!(&buf[o.ids..o.ids + 4], &[10, 11, 12, 13]);
        assert_eq!(&buf[o.slots..o.slots + 4], &[18, 19, 4, 48]);
        assert_eq!(&buf[o.ctx_len..o.ctx_len + 2], &[5, 9]);
        // Tiles of 2 queries: seq 0 -> q0 = 0, 2; seq 1 -> q0 = 0.
        assert_eq!(&buf[o.work..o.work + 6], &[0, 0, 0, 2, 1, 0]);
        assert_eq!(&buf[o.block_tables + 4..o.block_tables + 7], &[0, 2, 3]);
        assert_eq!(used_ranges(&layout, &c)[8], (o.block_tables, 8));
    }

    #[test]
    fn oversized_steps_are_errors() {
        let layout = MetaLayout::new(2, 4, 4);
        let mut buf = vec![0u32; layout.offsets().total];
        let (ids, m) = meta();
        assert!(pack(&mut buf, &layout, &ids, &m, 2).is_err());
    }

    #[test]
    fn padding_adds_inert_sequences() {
        let m = AttnMeta {
            positions: vec![4, 8],
            slot_mapping: vec![20, 48],
            seqs: vec![
                SeqAttn {
                    q_start: 0,
                    q_len: 1,
                    ctx_len: 5,
                    block_table: vec![1],
                },
                SeqAttn {
                    q_start: 1,
                    q_len: 1,
                    ctx_len: 9,
                    block_table: vec![3],
                },
            ],
            logit_rows: vec![0, 1],
        };
        assert!(is_pure_decode(&m));
        let (pids, pm) = pad_decode(&[1, 2], &m, 5);
        assert_eq!(pids.len(), 5);
        assert_eq!(pm.seqs.len(), 5);
        assert!(pm.seqs[2..].iter().all(|s| s.ctx_len == 0 && s.q_len == 1));
        assert!(pm.slot_mapping[2..].iter().all(|&s| s == NO_SLOT));
        assert_eq!(pm.logit_rows[2..], [2, 3, 4]);
    }
}
