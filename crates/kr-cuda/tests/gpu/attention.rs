//! RoPE + KV-cache write + paged attention alone, GPU vs CPU: prefill chunks over a cached
//! prefix (tensor cores), decode with many and few sequences (one block per pair, split-K) and
//! over long contexts (the split-K kernels' multi-tile paths), every split decode kernel, with
//! RoPE and the KV write fused in and after them.

use super::*;
use kr_cuda::backend::DecodeKernels;

/// Builds a test's steps (token ids and attention metadata) for a model config.
type StepsFn = dyn Fn(&ModelConfig) -> Vec<(Vec<u32>, AttnMeta)>;

/// Decode test cases: dtype, head size (both tiled kernels in both dtypes), tolerance (f32
/// 1e-4; bf16 2e-2 as for prefill).
const DECODE_CASES: [(DType, usize, f32); 4] = [
    (DType::F32, 64, 1e-4),
    (DType::F32, 128, 1e-4),
    (DType::Bf16, 64, 2e-2),
    (DType::Bf16, 128, 2e-2),
];

/// Every split decode kernel: tiled and generic, each merging in clusters and globally.
const ALL_DECODE_KERNELS: [DecodeKernels; 4] = [
    DecodeKernels {
        tiles: true,
        cluster: true,
    },
    DecodeKernels {
        tiles: true,
        cluster: false,
    },
    DecodeKernels {
        tiles: false,
        cluster: true,
    },
    DecodeKernels {
        tiles: false,
        cluster: false,
    },
];

/// The decode paths the tests check: every kernel with RoPE and the KV write fused in, and
/// the tiled and generic kernels after a separate RoPE + KV-write kernel.
const DECODE_PATHS: [(DecodeKernels, bool); 6] = [
    (ALL_DECODE_KERNELS[0], false),
    (ALL_DECODE_KERNELS[1], false),
    (ALL_DECODE_KERNELS[2], false),
    (ALL_DECODE_KERNELS[3], false),
    (ALL_DECODE_KERNELS[0], true),
    (ALL_DECODE_KERNELS[2], true),
];

/// Steps for the attention test: long prefills that span several 64-key tiles, a chunk over a
/// cached prefix, and a decode token and a short prompt in the same batch.
fn long_prefill_steps(c: &ModelConfig) -> Vec<(Vec<u32>, AttnMeta)> {
    // Scattered, non-monotonic block tables (16-token blocks).
    let tables: Vec<Vec<u32>> = vec![
        (0..16).map(|b| (b * 7 + 3) % 60).collect(),
        (0..8).map(|b| 60 + (b * 5) % 8).collect(),
        vec![70, 68],
    ];
    let plan = [vec![(0, 150), (1, 70)], vec![(0, 90), (1, 1), (2, 5)]];
    plan_steps(c, &tables, &plan)
}

/// One GPU-vs-CPU attention comparison: dtype and head size, cache blocks, the split decode
/// kernel (see `set_decode_kernels`), whether RoPE and the KV write run in their own kernel
/// first (`unfused`: the decode kernels then read the new token's key from the cache), the
/// longest sequence, and for long-context steps the most splits and fewest keys per split
/// (see `set_long_decode_splits`). With `prefill_writes_only`, steps that are not pure decode
/// only rotate and write the cache (on both sides) and are not compared: that fills 100k-key
/// contexts cheaply.
#[derive(Clone, Copy)]
struct AttentionCase {
    dtype: DType,
    head_dim: usize,
    blocks: usize,
    kernels: DecodeKernels,
    unfused: bool,
    max_model_len: usize,
    long_splits: (usize, usize),
    prefill_writes_only: bool,
    /// An fp8 cache on the GPU; the CPU's cache rows are then rounded the same way (rotated
    /// keys to bf16, then every row through E4M3 with its own scale).
    kv_fp8: bool,
    /// A sliding window of this many keys on the layer (0: none), on both sides.
    window: usize,
    /// Attention logits soft-capped at this value (Gemma 2; 0: none), on both sides.
    softcap: f32,
}

impl AttentionCase {
    fn new(dtype: DType, head_dim: usize, blocks: usize, kernels: DecodeKernels) -> Self {
        AttentionCase {
            dtype,
            head_dim,
            blocks,
            kernels,
            unfused: false,
            max_model_len: 1024,
            long_splits: (64, 128),
            prefill_writes_only: false,
            kv_fp8: false,
            window: 0,
            softcap: 0.0,
        }
    }
}

/// `attention_vs_cpu` of `case` over `steps`, printed as `what` and asserted within `tol`.
fn assert_attention_close(case: AttentionCase, steps: &StepsFn, what: &str, tol: f32) {
    let worst = attention_vs_cpu(case, steps);
    println!("{what}: max |GPU - CPU| = {worst:.2e}");
    assert!(worst <= tol, "{what}: {worst}");
}

/// RoPE + cache write + paged attention alone over `steps` (`rope_attention`: one kernel in
/// decode steps), on the GPU in the case's dtype vs the CPU backend in f32 (inputs rounded to
/// bf16 so both start from the same numbers); returns the largest difference of the attention
/// outputs.
fn attention_vs_cpu(case: AttentionCase, steps: &StepsFn) -> f32 {
    let (dtype, head_dim) = (case.dtype, case.head_dim);
    let cfg = tiny_config_with_head_dim("llama", RopeStyle::HalfSplit, head_dim);
    let ty = if dtype == DType::F32 {
        GgmlType::F32
    } else {
        GgmlType::BF16
    };
    let w = kr_model::random::random_weights(&cfg, ty, 5);
    let mut opts = options(dtype, case.blocks, false);
    opts.max_model_len = case.max_model_len;
    opts.kv_fp8 = case.kv_fp8;
    let model = CudaModel::load(&w, opts).expect("load");
    let g = model.backend();
    g.set_decode_kernels(case.kernels);
    g.set_long_decode_splits(case.long_splits.0, case.long_splits.1);
    let c = CpuBackend;
    let layout = kr_model::KvLayout {
        sliding_window: case.window,
        sliding_layers: u128::from(case.window > 0),
        softcap: case.softcap,
        ..kr_model::KvLayout::plain(1, case.blocks, 16, cfg.num_kv_heads, head_dim)
    };
    let (mut gcache, mut ccache) = (g.new_kv_cache(layout), c.new_kv_cache(layout));
    let rope = kr_model::Rope::from_config(&cfg);
    let widths = [
        cfg.num_heads * head_dim,
        cfg.num_kv_heads * head_dim,
        cfg.num_kv_heads * head_dim,
    ];
    let mut worst = 0f32;
    let mut steps = steps(&cfg);
    if case.window > 0 {
        free_blocks_behind_the_window(&mut steps, case.window);
    }
    for (i, (ids, meta)) in steps.iter().enumerate() {
        let n = ids.len();
        let data: Vec<Vec<f32>> = (0..3)
            .map(|j| bf16_values(n * widths[j], 100 * i as u64 + j as u64 + 1))
            .collect();
        let mut gt: Vec<_> = (0..3)
            .map(|j| g.upload_tensor(n, widths[j], &data[j]))
            .collect();
        let mut ct: Vec<_> = (0..3)
            .map(|j| kr_cpu::Mat::new(n, widths[j], data[j].clone()))
            .collect();
        g.begin_step(ids, meta);
        let (gv, cv) = (gt.pop().expect("v"), ct.pop().expect("v"));
        let (mut gk, mut ck) = (gt.pop().expect("k"), ct.pop().expect("k"));
        let (mut gq, mut cq) = (gt.pop().expect("q"), ct.pop().expect("q"));
        c.rope_and_write_kv(&mut cq, &mut ck, &cv, &rope, meta, 0, &mut ccache);
        if case.kv_fp8 {
            ccache.map_rows(0, &meta.slot_mapping, round_through_fp8);
        }
        let decode = meta.seqs.iter().all(|s| s.q_len == 1);
        if case.prefill_writes_only && !decode {
            g.rope_and_write_kv(&mut gq, &mut gk, &gv, &rope, meta, 0, &mut gcache);
            continue;
        }
        // The GPU takes the fused path (RoPE and the KV write inside the decode kernels); the
        // later steps read the keys that the earlier ones wrote that way.
        let heads = cfg.num_heads;
        let gout = if case.unfused {
            g.rope_and_write_kv(&mut gq, &mut gk, &gv, &rope, meta, 0, &mut gcache);
            g.paged_attention(&gq, meta, 0, &gcache, heads)
        } else {
            g.rope_attention(&mut gq, &mut gk, &gv, &rope, meta, 0, &mut gcache, heads)
        };
        let got = g.to_host(&gout);
        let want = c.paged_attention(&cq, meta, 0, &ccache, cfg.num_heads).data;
        assert!(
            got.iter().all(|v| v.is_finite()),
            "non-finite attention output"
        );
        worst = worst.max(max_diff(&got, &want));
    }
    assert!(g.take_error().is_none());
    worst
}

/// Marks each step's blocks that lie wholly before every query's window as freed
/// (`NO_BLOCK`), as the scheduler does when every layer slides: no kernel may read them.
fn free_blocks_behind_the_window(steps: &mut [(Vec<u32>, AttnMeta)], window: usize) {
    for (_, meta) in steps.iter_mut() {
        for s in &mut meta.seqs {
            let first_needed = (s.ctx_len - s.q_len + 1).saturating_sub(window);
            let freed = (first_needed / 16).min(s.block_table.len());
            s.block_table[..freed].fill(u32::MAX);
        }
    }
}

/// Prefill attention (the tensor-core kernel for bf16 head_dim 64 and 128) on long chunked
/// prefills. Tolerance 2e-2: outputs are O(0.5) averages; the GPU rounds q, k, v, the
/// probabilities and the output to bf16.
#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -p kr-cuda --test gpu -- --ignored"]
fn bf16_prefill_attention_matches_cpu() {
    require_gpu();
    for head_dim in [64, 128] {
        let case = AttentionCase::new(DType::Bf16, head_dim, 80, ALL_DECODE_KERNELS[0]);
        let what = format!("prefill attention bf16 head_dim {head_dim}");
        assert_attention_close(case, &long_prefill_steps, &what, 2e-2);
    }
}

/// Prompts for 80 sequences (16 per step, under 512 tokens), a decode step for all 80 (160 sequence x
/// kv-head pairs: one block each) and one for 5 (10 pairs: the split-K kernel).
fn many_decode_steps(c: &ModelConfig) -> Vec<(Vec<u32>, AttnMeta)> {
    let lens: Vec<usize> = (0..80).map(|i| 3 + (i * 7) % 40).collect();
    // Three 16-token blocks per sequence, the odd ones in reverse order.
    let tables: Vec<Vec<u32>> = (0..80)
        .map(|i| {
            let t: Vec<u32> = (0..3).map(|b| (3 * i + b) as u32).collect();
            if i % 2 == 1 {
                t.into_iter().rev().collect()
            } else {
                t
            }
        })
        .collect();
    let mut plan: Vec<Vec<(usize, usize)>> = (0..80)
        .collect::<Vec<_>>()
        .chunks(16)
        .map(|part| part.iter().map(|&s| (s, lens[s])).collect())
        .collect();
    plan.push((0..80).map(|s| (s, 1)).collect());
    plan.push(vec![(3, 1), (17, 1), (40, 1), (41, 1), (79, 1)]);
    plan_steps(c, &tables, &plan)
}

/// Steps from a plan: each step lists (sequence, new tokens); sequence s uses `tables[s]`.
fn plan_steps(
    c: &ModelConfig,
    tables: &[Vec<u32>],
    plan: &[Vec<(usize, usize)>],
) -> Vec<(Vec<u32>, AttnMeta)> {
    let mut done = vec![0usize; tables.len()];
    plan.iter()
        .map(|seqs| {
            let (mut ids, mut meta) = (Vec::new(), AttnMeta::default());
            for &(s, n) in seqs {
                let q_start = ids.len();
                for p in done[s]..done[s] + n {
                    ids.push(((p * 17 + s) % c.vocab_size) as u32);
                    meta.positions.push(p as u32);
                    meta.slot_mapping
                        .push(tables[s][p / 16] * 16 + (p % 16) as u32);
                }
                done[s] += n;
                meta.seqs.push(SeqAttn {
                    q_start,
                    q_len: n,
                    ctx_len: done[s],
                    block_table: tables[s].clone(),
                });
                meta.logit_rows.push(ids.len() - 1);
            }
            (ids, meta)
        })
        .collect()
}

/// Every case of DECODE_CASES on every path of DECODE_PATHS over `steps` (a cache of
/// `blocks` blocks), each within its case's tolerance.
fn check_every_decode_path(label: &str, blocks: usize, steps: &StepsFn) {
    for (dtype, head_dim, tol) in DECODE_CASES {
        for (kernels, unfused) in DECODE_PATHS {
            let case = AttentionCase {
                unfused,
                ..AttentionCase::new(dtype, head_dim, blocks, kernels)
            };
            let what =
                format!("{label} {dtype:?} head_dim {head_dim} {kernels:?} unfused {unfused}");
            assert_attention_close(case, steps, &what, tol);
        }
    }
}

/// Decode attention on both of its paths (one block per sequence x kv head, and split-K),
/// f32 and bf16. Tolerances: f32 1e-4; bf16 2e-2 as above.
#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -p kr-cuda --test gpu -- --ignored"]
fn decode_attention_matches_cpu_with_many_and_few_sequences() {
    require_gpu();
    check_every_decode_path("decode attention", 256, &many_decode_steps);
}

/// Chunked prefills of three sequences to 600, 900 and 1000 tokens (scattered, partly
/// reversed block tables), then three decode steps of all three. Six (sequence, kv head)
/// pairs take the split-K kernel with 16 splits (38 to 63 keys a block: two 32-key tiles)
/// or, merging in clusters, 8 splits (75 to 126 keys: three or four tiles), the running max
/// and sum carried from tile to tile.
fn long_decode_steps(c: &ModelConfig) -> Vec<(Vec<u32>, AttnMeta)> {
    let lens = [600usize, 900, 1000];
    let tables: Vec<Vec<u32>> = (0..3)
        .map(|s| {
            let t: Vec<u32> = (0..64).map(|b| (64 * s + b) as u32).collect();
            if s == 1 {
                t.into_iter().rev().collect()
            } else {
                t
            }
        })
        .collect();
    let mut plan: Vec<Vec<(usize, usize)>> = Vec::new();
    for (s, &len) in lens.iter().enumerate() {
        for chunk in (0..len).step_by(500) {
            plan.push(vec![(s, (len - chunk).min(500))]);
        }
    }
    for _ in 0..3 {
        plan.push(vec![(0, 1), (1, 1), (2, 1)]);
    }
    plan_steps(c, &tables, &plan)
}

/// Decode attention over long contexts (the split-K kernel's multi-tile path), f32 and bf16.
/// Tolerances as above.
#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -p kr-cuda --test gpu -- --ignored"]
fn decode_attention_matches_cpu_over_long_contexts() {
    require_gpu();
    check_every_decode_path("long-context decode", 200, &long_decode_steps);
}

/// Sequences of 5, 4,096, 32,768 and 131,072 keys (block tables scattered, one reversed),
/// filled by RoPE + KV writes alone in chunks of 512 tokens, then decode steps: all four
/// together, the 131k one alone, the 4k and 32k ones together.
fn very_long_decode_steps(c: &ModelConfig) -> Vec<(Vec<u32>, AttnMeta)> {
    let lens = [5usize, 4096, 32768, 131_072];
    let mut first = 0u32;
    let tables: Vec<Vec<u32>> = lens
        .iter()
        .enumerate()
        .map(|(s, &len)| {
            let n = (len + 16).div_ceil(16) as u32;
            let t: Vec<u32> = (0..n).map(|b| first + (b * 7919) % n).collect();
            first += n;
            if s == 2 {
                t.into_iter().rev().collect()
            } else {
                t
            }
        })
        .collect();
    let mut plan: Vec<Vec<(usize, usize)>> = Vec::new();
    for (s, &len) in lens.iter().enumerate() {
        for chunk in (0..len).step_by(512) {
            plan.push(vec![(s, (len - chunk).min(512))]);
        }
    }
    plan.push((0..4).map(|s| (s, 1)).collect());
    plan.push(vec![(3, 1)]);
    plan.push(vec![(1, 1), (2, 1)]);
    plan_steps(c, &tables, &plan)
}

/// Long-context decode (past 1,024 keys: up to 64 splits merged through global memory) at
/// 4k, 32k and 128k keys, in batches that mix them with a short sequence, for several split
/// counts and chunk sizes, fused and unfused, f32 and bf16. Tolerances as above.
#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -p kr-cuda --test gpu -- --ignored"]
fn decode_attention_matches_cpu_at_4k_32k_and_128k_keys() {
    require_gpu();
    let tiles = ALL_DECODE_KERNELS[1];
    for (dtype, head_dim, tol) in [DECODE_CASES[1], DECODE_CASES[3]] {
        for (long_splits, unfused) in [
            ((64, 128), false),
            ((64, 128), true),
            ((7, 32), false),
            ((16, 1024), false),
        ] {
            let case = AttentionCase {
                unfused,
                max_model_len: 131_072 + 64,
                long_splits,
                prefill_writes_only: true,
                ..AttentionCase::new(dtype, head_dim, 10_600, tiles)
            };
            let what = format!(
                "128k decode {dtype:?} head_dim {head_dim} splits {long_splits:?} unfused {unfused}"
            );
            assert_attention_close(case, &very_long_decode_steps, &what, tol);
        }
    }
}

/// A cache row as the GPU's fp8 cache stores it: bf16 (the rotated key is written in the
/// compute dtype first), then E4M3 codes with the row's own scale.
fn round_through_fp8(row: &mut [f32]) {
    use kr_model::quant::fp8::{dequantize_row, quantize_row};
    for x in row.iter_mut() {
        let b = x.to_bits();
        *x = f32::from_bits((b + 0x7fff + ((b >> 16) & 1)) & 0xffff_0000);
    }
    let mut codes = vec![0u8; row.len()];
    let scale = quantize_row(row, &mut codes);
    dequantize_row(&codes, scale, row);
}

/// The fp8 cache (bf16 compute) on every attention path: tensor-core prefill over a cached
/// prefix, decode with many sequences (one split each) and few (split), over 600 to 1,000
/// keys and over 4k to 128k keys (long-context splits), against the CPU with its cache rows
/// rounded as the GPU stores them. Tolerance 2e-2, as for the bf16 cache: the rounding is
/// the same on both sides, so what remains is the bf16 arithmetic.
#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -p kr-cuda --test gpu -- --ignored"]
fn fp8_cache_attention_matches_cpu_with_rows_rounded_alike() {
    require_gpu();
    let tiles = ALL_DECODE_KERNELS[1];
    let cases: [(&str, usize, usize, &StepsFn); 4] = [
        ("prefill", 80, 1024, &long_prefill_steps),
        (
            "decode, many and few sequences",
            256,
            1024,
            &many_decode_steps,
        ),
        ("decode over 600-1,000 keys", 200, 1024, &long_decode_steps),
        (
            "decode at 4k-128k keys",
            10_600,
            131_072 + 64,
            &very_long_decode_steps,
        ),
    ];
    for head_dim in [64, 128] {
        for (label, blocks, max_model_len, steps) in cases {
            let case = AttentionCase {
                max_model_len,
                prefill_writes_only: blocks > 1000,
                kv_fp8: true,
                ..AttentionCase::new(DType::Bf16, head_dim, blocks, tiles)
            };
            let what = format!("fp8 cache, {label}, head_dim {head_dim}");
            assert_attention_close(case, steps, &what, 2e-2);
        }
    }
}

/// Sliding-window layers (Mistral, Gemma's local layers) against the CPU, which attends from
/// `KvLayout::first_key`: windows of 1, 100 and 700 keys on prefill chunks over a cached
/// prefix (the window cutting off whole 64-key tiles and falling inside one), decode over 600
/// to 1,000 keys and with many short sequences, on the tiled kernels with RoPE fused in and
/// the generic ones after it, f32 and bf16, head_dim 64 and 128; the fp8 cache on the same
/// steps; and a 2,000-key window on the long-context splits (4k to 128k keys). Tolerances as
/// above.
#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -p kr-cuda --test gpu -- --ignored"]
fn sliding_window_attention_matches_cpu() {
    require_gpu();
    let steps: [(&str, usize, &StepsFn); 3] = [
        ("prefill", 80, &long_prefill_steps),
        ("decode over 600-1,000 keys", 200, &long_decode_steps),
        ("decode, many sequences", 256, &many_decode_steps),
    ];
    let paths = [DECODE_PATHS[1], DECODE_PATHS[5]];
    for window in [1, 100, 700] {
        for (label, blocks, steps) in steps {
            for (dtype, head_dim, tol) in DECODE_CASES {
                for (kernels, unfused) in paths {
                    let case = AttentionCase {
                        unfused,
                        window,
                        ..AttentionCase::new(dtype, head_dim, blocks, kernels)
                    };
                    let what = format!("window {window}, {label}, {dtype:?} head_dim {head_dim} {kernels:?} unfused {unfused}");
                    assert_attention_close(case, steps, &what, tol);
                }
            }
            for head_dim in [64, 128] {
                let case = AttentionCase {
                    kv_fp8: true,
                    window,
                    ..AttentionCase::new(DType::Bf16, head_dim, blocks, ALL_DECODE_KERNELS[1])
                };
                let what = format!("window {window}, {label}, fp8 cache head_dim {head_dim}");
                assert_attention_close(case, steps, &what, 2e-2);
            }
        }
    }
    let case = AttentionCase {
        max_model_len: 131_072 + 64,
        prefill_writes_only: true,
        window: 2000,
        ..AttentionCase::new(DType::Bf16, 128, 10_600, ALL_DECODE_KERNELS[1])
    };
    let what = "window 2000, decode at 4k-128k keys";
    assert_attention_close(case, &very_long_decode_steps, what, 2e-2);
}

/// Soft-capped attention logits (Gemma 2: `cap · tanh(score / cap)`) on every attention path:
/// prefill (tensor cores for bf16, CUDA cores for f32), the tiled and generic decode kernels,
/// the long-context splits and the fp8 cache, with a cap of 0.5 so that the random scores
/// (O(1)) are bent hard, and with a window too. Tolerances as above.
#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -p kr-cuda --test gpu -- --ignored"]
fn soft_capped_attention_matches_cpu() {
    require_gpu();
    let steps: [(&str, usize, &StepsFn); 3] = [
        ("prefill", 80, &long_prefill_steps),
        ("decode over 600-1,000 keys", 200, &long_decode_steps),
        ("decode, many sequences", 256, &many_decode_steps),
    ];
    for window in [0, 100] {
        for (label, blocks, steps) in steps {
            for (dtype, head_dim, tol) in DECODE_CASES {
                for (kernels, unfused) in [DECODE_PATHS[1], DECODE_PATHS[3], DECODE_PATHS[5]] {
                    let case = AttentionCase {
                        unfused,
                        window,
                        softcap: 0.5,
                        ..AttentionCase::new(dtype, head_dim, blocks, kernels)
                    };
                    let what = format!("softcap 0.5, window {window}, {label}, {dtype:?} head_dim {head_dim} {kernels:?} unfused {unfused}");
                    assert_attention_close(case, steps, &what, tol);
                }
            }
            let case = AttentionCase {
                kv_fp8: true,
                window,
                softcap: 0.5,
                ..AttentionCase::new(DType::Bf16, 128, blocks, ALL_DECODE_KERNELS[1])
            };
            let what = format!("softcap 0.5, window {window}, {label}, fp8 cache");
            assert_attention_close(case, steps, &what, 2e-2);
        }
    }
    let case = AttentionCase {
        max_model_len: 131_072 + 64,
        prefill_writes_only: true,
        softcap: 0.5,
        ..AttentionCase::new(DType::Bf16, 128, 10_600, ALL_DECODE_KERNELS[1])
    };
    let what = "softcap 0.5, decode at 4k-128k keys";
    assert_attention_close(case, &very_long_decode_steps, what, 2e-2);
}
