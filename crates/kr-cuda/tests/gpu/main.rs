//! The CUDA backend against the CPU backend and against Hugging Face references. Every test
//! is `#[ignore]`d, so `cargo test` without a GPU reports it ignored; on the GPU machine run
//! `cargo test -p kr-cuda --test gpu -- --ignored` (or the binary `cargo test -p kr-cuda
//! --no-run` builds, with `--ignored`). Asked for on a machine without a usable GPU, each
//! test fails.
//!
//! Tolerances (absolute, on logits):
//! - f32 on the GPU vs the CPU backend: 1e-4 (same f32 arithmetic, another summation order);
//! - bf16 on the GPU vs the CPU backend in f32 on the same bf16 weights: 5e-2 (activations are
//!   rounded to bf16 after every operation; random-weight logits are O(0.3));
//! - hf-tiny in f32 vs transformers: 1e-4, as the CPU test; computed in bf16: 0.25 (its logits
//!   reach 6.4, and bf16 keeps 8 bits: the output rounding alone is up to 0.0125);
//! - SmolLM2 in bf16 vs transformers' f32 top-20 at the last position: 0.5 (logits are O(10)).
//! Measured errors are printed (`-- --nocapture`).

use kr_cpu::CpuBackend;
use kr_cuda::{CudaModel, CudaModelOptions, DType, RowSampling};
use kr_model::quant::GgmlType;
use kr_model::{AttnMeta, Backend, Decoder, ModelConfig, ModelWeights, RopeStyle, SeqAttn};
use std::path::PathBuf;

mod attention;
mod families;
mod invariant;
mod kernels;
mod quant;

/// Fails the test unless GPU 0 is usable (the tests are ignored unless asked for). Also
/// selects the CPU backend's exact f32 products, the reference the GPU is compared with.
fn require_gpu() {
    kr_cpu::q8dot::set_exact(true);
    match kr_cuda::probe(0) {
        Ok(info) => eprintln!("GPU: {} ({} MiB)", info.name, info.total_memory >> 20),
        Err(e) => panic!("this test needs an NVIDIA GPU; kr_cuda::probe(0) failed: {e}"),
    }
}

fn options(dtype: DType, blocks: usize, graphs: bool) -> CudaModelOptions {
    CudaModelOptions {
        ordinal: 0,
        dtype,
        gpu_memory_fraction: 0.9,
        block_size: 16,
        max_num_batched_tokens: 512,
        max_num_seqs: 8,
        max_model_len: 1024,
        num_kv_blocks: Some(blocks),
        cuda_graphs: graphs,
        kv_fp8: false,
        batch_invariant: false,
    }
}

/// A small model of real structure: 2 layers, GQA 8/2, head_dim 32.
fn tiny_config(arch: &str, style: RopeStyle) -> ModelConfig {
    tiny_config_with_head_dim(arch, style, 32)
}

fn tiny_config_with_head_dim(arch: &str, style: RopeStyle, head_dim: usize) -> ModelConfig {
    let mut c = kr_model::random::arch_config("qwen2.5-0.5b").expect("arch");
    c.architecture = arch.into();
    c.num_layers = 2;
    c.hidden_size = 256;
    c.num_heads = 8;
    c.num_kv_heads = 2;
    c.head_dim = head_dim;
    c.intermediate_size = 512;
    c.vocab_size = 1000;
    c.rope_style = style;
    c.tie_embeddings = arch != "llama";
    c
}

fn tiny_weights(arch: &str, style: RopeStyle, ty: GgmlType) -> ModelWeights {
    let mut w = kr_model::random::random_weights(&tiny_config(arch, style), ty, 11);
    // Gains other than one, so that the GPU's folding them into the projections is checked.
    for (i, l) in w.layers.iter_mut().enumerate() {
        let gain = |d: usize, k: usize| 0.6 + ((d * k + i) % 17) as f32 / 20.0;
        l.attn_norm = (0..l.attn_norm.len()).map(|d| gain(d, 7)).collect();
        l.ffn_norm = (0..l.ffn_norm.len()).map(|d| gain(d, 5)).collect();
    }
    if arch == "qwen3" {
        for (i, l) in w.layers.iter_mut().enumerate() {
            l.q_norm = Some((0..32).map(|d| 0.5 + (d + i) as f32 / 40.0).collect());
            l.k_norm = Some((0..32).map(|d| 1.5 - (d * 3 + i) as f32 / 80.0).collect());
        }
    }
    w
}

/// Three sequences with scattered block tables; steps mix chunked prefill with a cached
/// prefix, decode and a new sequence, then pure decode steps (the graph path).
struct Script {
    tables: Vec<Vec<u32>>,
    lens: Vec<usize>,
}

impl Script {
    fn new() -> Self {
        Self {
            tables: vec![vec![5, 17, 2, 30, 8], vec![9, 11, 25], vec![0, 33, 21]],
            lens: vec![0; 3],
        }
    }

    fn step(&mut self, new: &[(usize, usize, bool)], vocab: usize) -> (Vec<u32>, AttnMeta) {
        let mut ids = Vec::new();
        let mut meta = AttnMeta::default();
        for &(seq, n, sample) in new {
            let q_start = ids.len();
            for p in self.lens[seq]..self.lens[seq] + n {
                ids.push(((p * 131 + seq * 977 + 7) % vocab) as u32);
                meta.positions.push(p as u32);
                meta.slot_mapping
                    .push(self.tables[seq][p / 16] * 16 + (p % 16) as u32);
            }
            self.lens[seq] += n;
            meta.seqs.push(SeqAttn {
                q_start,
                q_len: n,
                ctx_len: self.lens[seq],
                block_table: self.tables[seq].clone(),
            });
            if sample {
                meta.logit_rows.push(ids.len() - 1);
            }
        }
        (ids, meta)
    }

    fn steps(vocab: usize) -> Vec<(Vec<u32>, AttnMeta)> {
        let mut s = Self::new();
        let mut out = vec![
            s.step(&[(0, 20, false), (1, 7, true)], vocab),
            s.step(&[(0, 25, true), (1, 1, true), (2, 12, true)], vocab),
        ];
        for _ in 0..5 {
            out.push(s.step(&[(0, 1, true), (1, 1, true), (2, 1, true)], vocab));
        }
        out.push(s.step(&[(2, 1, true), (0, 1, true)], vocab));
        // Single-token steps: bf16 takes the CUDA-core GEMVs with the norms folded into them.
        for _ in 0..3 {
            out.push(s.step(&[(1, 1, true)], vocab));
        }
        out
    }
}

/// The profiled step ran its layer norms inside the GEMVs: the only norm kernel left is the
/// final one, and the embedding started the norm sums.
fn assert_norms_folded(gpu: &CudaModel, arch: &str) {
    let launches = gpu.backend().take_profile().expect("profile");
    gpu.backend().set_profiling(false);
    let names: Vec<&str> = launches.iter().map(|(n, _)| *n).collect();
    let norms = names.iter().filter(|n| n.starts_with("rms_norm")).count();
    assert_eq!(
        norms, 1,
        "{arch}: norm kernels of a 1-token step: {names:?}"
    );
    assert!(names.contains(&"embed_norm_sums"), "{arch}: {names:?}");
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Runs the script on the CPU backend and on the GPU; returns the largest logit difference.
fn compare_with_cpu(arch: &str, style: RopeStyle, dtype: DType, graphs: bool) -> f32 {
    let ty = if dtype == DType::F32 {
        GgmlType::F32
    } else {
        GgmlType::BF16
    };
    let w = tiny_weights(arch, style, ty);
    let cpu = Decoder::new(CpuBackend, &w);
    let mut cpu_cache = cpu.new_kv_cache(40, 16);
    let mut gpu = CudaModel::load(&w, options(dtype, 40, graphs)).expect("load on the GPU");
    let mut worst = 0f32;
    for (i, (ids, meta)) in Script::steps(w.config.vocab_size).iter().enumerate() {
        let want = cpu.forward(ids, meta, &mut cpu_cache);
        // Eager single-token steps are profiled to check that their norms ran folded.
        let check_folding = !graphs && ids.len() == 1;
        gpu.backend().set_profiling(check_folding);
        let got = gpu.forward(ids, meta).expect("GPU step");
        if check_folding {
            assert_norms_folded(&gpu, arch);
        }
        assert!(
            got.iter().all(|v| v.is_finite()),
            "{arch}: step {i} has non-finite logits"
        );
        worst = worst.max(max_diff(&got, &want));
    }
    assert_eq!(
        gpu.allocations_since_load(),
        0,
        "a step allocated device memory"
    );
    println!("{arch} {style:?} {dtype:?} graphs={graphs}: max |GPU - CPU| = {worst:.2e}");
    worst
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -p kr-cuda --test gpu -- --ignored"]
fn f32_forward_matches_cpu_backend_on_ragged_batches() {
    require_gpu();
    for (arch, style) in [
        ("llama", RopeStyle::Interleaved),
        ("qwen2", RopeStyle::HalfSplit),
        ("qwen3", RopeStyle::HalfSplit),
    ] {
        for graphs in [false, true] {
            let e = compare_with_cpu(arch, style, DType::F32, graphs);
            assert!(e <= 1e-4, "{arch} graphs={graphs}: {e}");
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -p kr-cuda --test gpu -- --ignored"]
fn bf16_forward_stays_close_to_cpu_backend() {
    require_gpu();
    for (arch, style) in [
        ("llama", RopeStyle::HalfSplit),
        ("qwen3", RopeStyle::HalfSplit),
    ] {
        let e = compare_with_cpu(arch, style, DType::Bf16, true);
        assert!(e <= 5e-2, "{arch} bf16: {e}");
    }
}

fn hf_tiny(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/reference/hf-tiny")
        .join(name)
}

/// The input ids and the logits at every position (flattened) of a directory's
/// reference.json.
fn reference_logits(dir: &std::path::Path) -> (Vec<u32>, Vec<f32>) {
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).expect("ref"))
            .expect("json");
    let ids = r["input_ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_u64().expect("id") as u32)
        .collect();
    let logits = r["logits"]
        .as_array()
        .expect("logits")
        .iter()
        .flat_map(|row| {
            row.as_array()
                .expect("row")
                .iter()
                .map(|v| v.as_f64().expect("f") as f32)
        })
        .collect();
    (ids, logits)
}

/// Logits at every position of `ids` (one prefill step).
fn all_logits(m: &mut CudaModel, ids: &[u32]) -> Vec<f32> {
    let n = ids.len();
    let meta = AttnMeta {
        positions: (0..n as u32).collect(),
        slot_mapping: (0..n as u32).collect(),
        seqs: vec![SeqAttn {
            q_start: 0,
            q_len: n,
            ctx_len: n,
            block_table: (0..n.div_ceil(16) as u32).collect(),
        }],
        logit_rows: (0..n).collect(),
    };
    m.forward(ids, &meta).expect("GPU step")
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -p kr-cuda --test gpu -- --ignored"]
fn hf_tiny_models_match_transformers() {
    require_gpu();
    for arch in ["llama", "qwen2", "qwen3", "mistral"] {
        for (variant, dtype, tol) in [
            ("f32", DType::F32, 1e-4f32),
            ("bf16", DType::F32, 1e-4),
            ("bf16", DType::Bf16, 0.25),
        ] {
            let dir = hf_tiny(&format!("{arch}-{variant}"));
            let m = kr_model::hf::load_hf_dir(&dir).expect("hf-tiny model");
            let (ids, want) = reference_logits(&dir);
            let mut gpu = CudaModel::load(&m.weights, options(dtype, 64, false)).expect("load");
            let e = max_diff(&all_logits(&mut gpu, &ids), &want);
            println!("hf-tiny {arch}-{variant} computed in {dtype:?}: max |logit error| = {e:.2e}");
            assert!(e <= tol, "{arch}-{variant} {dtype:?}: {e}");
        }
    }
}

/// `n` uniform values in [0, 1) from a seeded xorshift.
fn xorshift(n: usize, seed: u64) -> impl Iterator<Item = f32> {
    let mut x = seed | 1;
    (0..n).map(move |_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 40) as f32 / (1u64 << 24) as f32
    })
}

/// Uniform values in [-1, 1) rounded to bf16, so both backends start from the same numbers.
fn bf16_values(n: usize, seed: u64) -> Vec<f32> {
    xorshift(n, seed)
        .map(|u| f32::from_bits((2.0 * u - 1.0).to_bits() & 0xffff_0000))
        .collect()
}

/// The probability of each token under the CPU sampler's rules (temperature, top-k, then top-p
/// and min-p over the kept tokens), in f64.
fn expected_probs(logits: &[f32], r: &RowSampling) -> Vec<f64> {
    let z: Vec<f64> = logits
        .iter()
        .map(|&l| l as f64 / r.temperature as f64)
        .collect();
    let mut idx: Vec<usize> = (0..z.len()).collect();
    idx.sort_by(|&a, &b| z[b].total_cmp(&z[a]).then(a.cmp(&b)));
    if r.top_k > 0 {
        idx.truncate(r.top_k as usize);
    }
    let p: Vec<f64> = idx.iter().map(|&i| (z[i] - z[idx[0]]).exp()).collect();
    let total: f64 = p.iter().sum();
    let p: Vec<f64> = p.iter().map(|x| x / total).collect();
    let mut keep = p.len();
    if r.top_p < 1.0 {
        let mut acc = 0.0;
        keep = p
            .iter()
            .position(|&x| {
                acc += x;
                acc >= r.top_p as f64
            })
            .map_or(keep, |i| i + 1);
    }
    if r.min_p > 0.0 {
        let floor = r.min_p as f64 * p[0];
        keep = keep.min(p.iter().take_while(|&&x| x >= floor).count().max(1));
    }
    let mass: f64 = p[..keep].iter().sum();
    let mut out = vec![0.0; z.len()];
    for (j, &i) in idx[..keep].iter().enumerate() {
        out[i] = p[j] / mass;
    }
    out
}

/// The device sampler over 4096 copies of one logits row with stratified uniform numbers
/// (u_i = (i + 0.5) / 4096): each token must be drawn N·p ± 2 times (p from the CPU sampler's
/// rules) and tokens outside the kept set never. Logits are distinct multiples of 1/32, exact in
/// bf16, so both element types see the same row and no ties sit at a cut.
#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -p kr-cuda --test gpu -- --ignored"]
fn device_sampling_draws_the_expected_distribution() {
    require_gpu();
    // 500 columns: whole 16-byte vectors (every row in f32, every other one in bf16 starts
    // aligned: the draw by spans); 499: never (the draw by runs of columns).
    for vocab in [500usize, 499] {
        sampling_distribution(vocab);
    }
}

fn sampling_distribution(vocab: usize) {
    let n = 4096usize;
    let row: Vec<f32> = (0..vocab)
        .map(|t| ((t * 37) % vocab) as f32 / 32.0 - 7.8)
        .collect();
    let base = |temperature, top_k, top_p, min_p| RowSampling {
        temperature,
        top_k,
        top_p,
        min_p,
        uniform: 0.0,
        allowed: None,
    };
    let cases = [
        base(0.7, 0, 1.0, 0.0),
        base(1.0, 50, 1.0, 0.0),
        base(1.0, 0, 0.9, 0.0),
        base(0.8, 0, 1.0, 0.05),
        base(1.3, 40, 0.8, 0.02),
    ];
    for (dtype, ty) in [(DType::F32, GgmlType::F32), (DType::Bf16, GgmlType::BF16)] {
        let w = tiny_weights("llama", RopeStyle::HalfSplit, ty);
        let model = CudaModel::load(&w, options(dtype, 8, false)).expect("load");
        let g = model.backend();
        let logits = g.upload_tensor(n, vocab, &row.repeat(n));
        for case in cases.iter().cloned() {
            let counts = sampled_counts(g, &logits, &case, n, vocab);
            let want = expected_probs(&row, &case);
            let worst = worst_count_error(&counts, &want, n);
            let outside = (0..vocab)
                .filter(|&t| want[t] == 0.0 && counts[t] > 0)
                .count();
            println!("sampling {dtype:?} {vocab} columns {case:?}: max |count - N p| = {worst:.2}, drawn outside the kept set: {outside}");
            assert!(worst <= 2.0 && outside == 0, "{dtype:?} {case:?}");
        }
        let best = (0..vocab)
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .expect("row");
        let greedy = g.sample(&logits, &vec![RowSampling::greedy(); 3]);
        assert_eq!(greedy, vec![best as u32; 3], "{dtype:?} greedy");
        masked_sampling(g, &row, dtype);
        assert!(g.take_error().is_none());
    }
}

/// How often each token is drawn from `n` rows of `logits` sampled with `case`, their
/// uniforms spread evenly over (0, 1) (so the counts follow N·p within rounding).
fn sampled_counts(
    g: &kr_cuda::CudaBackend,
    logits: &kr_cuda::backend::CudaTensor,
    case: &RowSampling,
    n: usize,
    vocab: usize,
) -> Vec<usize> {
    let rows: Vec<RowSampling> = (0..n)
        .map(|i| RowSampling {
            uniform: (i as f32 + 0.5) / n as f32,
            ..case.clone()
        })
        .collect();
    let mut counts = vec![0usize; vocab];
    for id in g.sample(logits, &rows) {
        counts[id as usize] += 1;
    }
    counts
}

/// The largest |count − N·p| over the tokens.
fn worst_count_error(counts: &[usize], want: &[f64], n: usize) -> f64 {
    counts
        .iter()
        .zip(want)
        .map(|(&c, &p)| (c as f64 - p * n as f64).abs())
        .fold(0.0, f64::max)
}

/// The device sampler with a grammar-style mask (every third token, and never the largest
/// logit): the same counts as the CPU rules over the row with the other logits at -inf,
/// nothing drawn outside the mask, greedy picks the largest allowed logit; unmasked rows of
/// the same step are untouched.
fn masked_sampling(g: &kr_cuda::CudaBackend, row: &[f32], dtype: DType) {
    let (n, vocab) = (4096usize, row.len());
    let best = (0..vocab)
        .max_by(|&a, &b| row[a].total_cmp(&row[b]))
        .expect("row");
    let ok = |t: usize| t % 3 == 1 && t != best;
    let mut words = vec![0u32; vocab.div_ceil(32)];
    for t in (0..vocab).filter(|&t| ok(t)) {
        words[t / 32] |= 1 << (t % 32);
    }
    let allowed: std::sync::Arc<[u32]> = words.into();
    let masked: Vec<f32> = (0..vocab)
        .map(|t| if ok(t) { row[t] } else { f32::NEG_INFINITY })
        .collect();
    let case = RowSampling {
        temperature: 0.9,
        top_k: 0,
        top_p: 0.95,
        min_p: 0.0,
        uniform: 0.0,
        allowed: Some(allowed.clone()),
    };
    let logits = g.upload_tensor(n, vocab, &row.repeat(n));
    let counts = sampled_counts(g, &logits, &case, n, vocab);
    let want = expected_probs(&masked, &case);
    let worst = worst_count_error(&counts, &want, n);
    let outside = (0..vocab).filter(|&t| !ok(t) && counts[t] > 0).count();
    println!("masked sampling {dtype:?} {vocab} columns: max |count - N p| = {worst:.2}, drawn outside the mask: {outside}");
    assert!(worst <= 2.0 && outside == 0, "{dtype:?} masked");
    let best_allowed = (0..vocab)
        .filter(|&t| ok(t))
        .max_by(|&a, &b| row[a].total_cmp(&row[b]))
        .expect("allowed");
    let mixed = vec![
        RowSampling {
            allowed: Some(allowed),
            ..RowSampling::greedy()
        },
        RowSampling::greedy(),
    ];
    let logits = g.upload_tensor(2, vocab, &row.repeat(2));
    let got = g.sample(&logits, &mixed);
    assert_eq!(
        got,
        vec![best_allowed as u32, best as u32],
        "{dtype:?} masked greedy"
    );
}
