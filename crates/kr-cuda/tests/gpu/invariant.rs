//! Batch-invariant mode (`CudaModelOptions::batch_invariant`): one sequence decoded alone and
//! decoded beside 0..=11 others (at changing places in the batch, with and without CUDA
//! graphs) gets bitwise the same logits at every step; and the mode refuses what its kernels
//! do not cover, by name.

use super::*;

/// A Llama-shaped model whose every projection the tensor-core GEMV takes (head_dim 64,
/// vocab 1,008: rows multiples of 16, widths of 32).
fn invariant_weights() -> ModelWeights {
    let mut c = tiny_config_with_head_dim("llama", RopeStyle::Interleaved, 64);
    c.vocab_size = 1008;
    kr_model::random::random_weights(&c, GgmlType::F32, 29)
}

fn invariant_options(graphs: bool) -> CudaModelOptions {
    CudaModelOptions {
        max_num_seqs: 16,
        batch_invariant: true,
        ..options(DType::Bf16, 256, graphs)
    }
}

/// Sequences with their own block tables (16 blocks of 16 slots each) and lengths.
struct Seqs {
    lens: Vec<usize>,
}

impl Seqs {
    fn token(seq: usize, pos: usize) -> u32 {
        ((pos * 131 + seq * 977 + 7) % 1000) as u32
    }

    /// One step computing `n` tokens of each listed sequence; logits of each one's last token.
    fn step(&mut self, m: &mut CudaModel, which: &[(usize, usize)]) -> Vec<Vec<f32>> {
        let (mut ids, mut meta) = (Vec::new(), AttnMeta::default());
        for &(seq, n) in which {
            let q_start = ids.len();
            for p in self.lens[seq]..self.lens[seq] + n {
                ids.push(Self::token(seq, p));
                meta.positions.push(p as u32);
                meta.slot_mapping
                    .push(((seq * 16 + p / 16) * 16 + p % 16) as u32);
            }
            self.lens[seq] += n;
            let ctx = self.lens[seq];
            meta.seqs.push(SeqAttn {
                q_start,
                q_len: n,
                ctx_len: ctx,
                block_table: (0..ctx.div_ceil(16) as u32)
                    .map(|b| seq as u32 * 16 + b)
                    .collect(),
            });
            meta.logit_rows.push(ids.len() - 1);
        }
        let logits = m.forward(&ids, &meta).expect("GPU step");
        logits.chunks(1008).map(<[f32]>::to_vec).collect()
    }
}

/// Sequence 0's logits over a 40-token prefill and 24 decode steps; `others(step)` lists
/// the sequences decoding beside it at that step and where sequence 0 sits among them.
fn logits_of_seq0(graphs: bool, others: &dyn Fn(usize) -> (Vec<usize>, usize)) -> Vec<Vec<f32>> {
    let w = invariant_weights();
    let mut m = CudaModel::load(&w, invariant_options(graphs)).expect("load");
    let mut s = Seqs { lens: vec![0; 12] };
    let mut out = s.step(&mut m, &[(0, 40)]);
    for seq in 1..12 {
        s.step(&mut m, &[(seq, 3 + 5 * seq)]); // each prompt in a step of its own
    }
    for step in 0..24 {
        let (beside, at) = others(step);
        let mut batch: Vec<(usize, usize)> = beside.iter().map(|&q| (q, 1)).collect();
        batch.insert(at.min(batch.len()), (0, 1));
        let logits = s.step(&mut m, &batch);
        out.push(logits[at.min(beside.len())].clone());
    }
    out
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -p kr-cuda --test gpu -- --ignored"]
fn batch_invariant_decode_gives_a_sequence_the_same_logits_in_any_batch() {
    require_gpu();
    for graphs in [false, true] {
        let alone = logits_of_seq0(graphs, &|_| (Vec::new(), 0));
        let beside = logits_of_seq0(graphs, &|step| {
            let n = (step * 5) % 12; // 0..=11 others: batches of 1..=12 tokens
            ((1..=n).collect(), step % (n + 1))
        });
        let differing = alone.iter().zip(&beside).filter(|(a, b)| a != b).count();
        let worst = alone
            .iter()
            .zip(&beside)
            .map(|(a, b)| max_diff(a, b))
            .fold(0f32, f32::max);
        println!(
            "batch-invariant, graphs {graphs}: {differing}/25 steps differ (max |Δ| {worst:e})"
        );
        assert_eq!(differing, 0, "sequence 0's logits changed with the batch");
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -p kr-cuda --test gpu -- --ignored"]
fn batch_invariant_mode_refuses_what_its_kernels_do_not_cover() {
    require_gpu();
    let w = invariant_weights();
    let f32_opts = CudaModelOptions {
        dtype: DType::F32,
        ..invariant_options(false)
    };
    let head_32 = kr_model::random::random_weights(
        &tiny_config_with_head_dim("llama", RopeStyle::Interleaved, 32),
        GgmlType::F32,
        3,
    );
    for (label, weights, opts) in [
        ("f32 compute", &w, f32_opts),
        ("head_dim 32", &head_32, invariant_options(false)),
    ] {
        let err = match CudaModel::load(weights, opts) {
            Ok(_) => panic!("batch-invariant mode took {label}"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("--batch-invariant"), "{label}: {err}");
        println!("{label}: {err}");
    }
}
