//! Turns a scheduler step plan into one packed model batch and runs it.

use kr_core::StepPlan;
use kr_model::{AttnMeta, SeqAttn};

/// Packs the plan's tokens sequence after sequence and describes them for attention.
pub fn build_batch(plan: &StepPlan, block_size: usize) -> (Vec<u32>, AttnMeta) {
    let n = plan.num_tokens();
    let mut ids = Vec::with_capacity(n);
    let mut meta = AttnMeta {
        positions: Vec::with_capacity(n),
        slot_mapping: Vec::with_capacity(n),
        ..Default::default()
    };
    for s in &plan.seqs {
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
        if s.sample {
            meta.logit_rows.push(ids.len() - 1);
        }
    }
    (ids, meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kr_core::ScheduledSeq;

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
        let (ids, meta) = build_batch(&plan, 4);
        assert_eq!(ids, vec![7, 8, 9]);
        assert_eq!(meta.positions, vec![3, 4, 0]);
        assert_eq!(meta.slot_mapping, vec![5 * 4 + 3, 2 * 4, 0]);
        assert_eq!(meta.logit_rows, vec![1]);
        assert_eq!(meta.seqs[0].ctx_len, 5);
    }
}
