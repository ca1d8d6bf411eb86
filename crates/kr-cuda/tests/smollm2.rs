//! SmolLM2-135M-Instruct on the GPU against the transformers reference
//! (tests/reference/smollm2_hf_reference.json): in f32 the 32-token greedy continuations must
//! equal the reference (as the CPU backend's do); in bf16 the first 16 greedy tokens must agree
//! on most prompts and the last position's top-20 logits stay within 0.5 (logits are O(10)).
//! With f32 weights and bf16 compute, an fp8 KV cache keeps at least 8 of 12 64-token greedy
//! texts of the bf16 cache (issue 18).
//! Ignored unless asked for (`cargo test -p kr-cuda --test smollm2 -- --ignored`, on a GPU
//! machine; without a GPU it then fails); skipped with one line without the test models
//! (`$KR_TEST_MODELS`, else ../shared/models; see tests/support/test_models.rs).

use kr_cuda::{CudaModel, CudaModelOptions, DType};
use kr_model::{AttnMeta, SeqAttn};
use serde_json::Value;

#[path = "../../../tests/support/test_models.rs"]
mod test_models;

fn load(dtype: DType) -> Option<CudaModel> {
    load_with(dtype, false, false)
}

/// SmolLM2 on the GPU; with `f32_weights` its Q4_1 matrices decoded to f32 first (so only the
/// compute and the cache round), with `kv_fp8` an fp8 KV cache.
fn load_with(dtype: DType, f32_weights: bool, kv_fp8: bool) -> Option<CudaModel> {
    if let Err(e) = kr_cuda::probe(0) {
        panic!("this test needs an NVIDIA GPU; kr_cuda::probe(0) failed: {e}");
    }
    let path = test_models::path(test_models::SMOLLM2)?;
    let file = kr_model::gguf::GgufFile::open(&path).expect("gguf");
    let mut w = kr_model::gguf_model::weights_from_gguf(&file).expect("weights");
    if f32_weights {
        let f32_of = |t: &kr_model::RawTensor| {
            kr_model::RawTensor::from_f32(&t.name, t.rows, t.cols, &t.to_f32())
        };
        w.embedding = f32_of(&w.embedding);
        w.lm_head = w.lm_head.as_ref().map(f32_of);
        for l in &mut w.layers {
            for m in [
                &mut l.wq,
                &mut l.wk,
                &mut l.wv,
                &mut l.wo,
                &mut l.w_gate,
                &mut l.w_up,
                &mut l.w_down,
            ] {
                *m = f32_of(m);
            }
        }
    }
    let opts = CudaModelOptions {
        ordinal: 0,
        dtype,
        gpu_memory_fraction: 0.9,
        block_size: 16,
        max_num_batched_tokens: 512,
        max_num_seqs: 8,
        max_model_len: 512,
        num_kv_blocks: Some(64),
        cuda_graphs: true,
        kv_fp8,
        batch_invariant: false,
    };
    Some(CudaModel::load(&w, opts).expect("load"))
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// Greedy continuation of `prompt` (prefill, then graph-replayed decode steps); also returns
/// the prefill's last-position logits.
fn greedy(m: &mut CudaModel, prompt: &[u32], n: usize, eos: &[u32]) -> (Vec<u32>, Vec<f32>) {
    let table: Vec<u32> = (0..32).collect();
    let step = |start: usize, toks: &[u32]| AttnMeta {
        positions: (start..start + toks.len()).map(|p| p as u32).collect(),
        slot_mapping: (start..start + toks.len()).map(|p| p as u32).collect(),
        seqs: vec![SeqAttn {
            q_start: 0,
            q_len: toks.len(),
            ctx_len: start + toks.len(),
            block_table: table.clone(),
        }],
        logit_rows: vec![toks.len() - 1],
    };
    let logits = m.forward(prompt, &step(0, prompt)).expect("prefill");
    let mut out = vec![kr_engine_argmax(&logits)];
    while out.len() < n && !eos.contains(out.last().expect("token")) {
        let pos = prompt.len() + out.len() - 1;
        let last = [*out.last().expect("token")];
        out.push(m.forward_greedy(&last, &step(pos, &last)).expect("decode")[0]);
    }
    (out, logits)
}

fn kr_engine_argmax(row: &[f32]) -> u32 {
    row.iter()
        .enumerate()
        .fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
        .0 as u32
}

fn reference() -> Value {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/reference/smollm2_hf_reference.json"
    );
    serde_json::from_str(&std::fs::read_to_string(p).expect("reference")).expect("json")
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -p kr-cuda --test smollm2 -- --ignored"]
fn f32_greedy_matches_reference_and_bf16_stays_close() {
    let Some(mut f32m) = load(DType::F32) else {
        return;
    };
    let r = reference();
    let eos = ids(&r["generation_eos_ids"]);
    for (i, p) in r["prompts"].as_array().expect("prompts").iter().enumerate() {
        let want = ids(&p["greedy"]["generated_ids"]);
        let (got, _) = greedy(&mut f32m, &ids(&p["input_ids"]), want.len(), &eos);
        assert_eq!(got, want, "prompt {i}: f32 greedy differs");
    }
    println!("f32: all 5 greedy continuations equal the reference");
    drop(f32m);
    let Some(mut bf) = load(DType::Bf16) else {
        return;
    };
    let (mut agree, mut worst) = (0, 0f32);
    for (i, p) in r["prompts"].as_array().expect("prompts").iter().enumerate() {
        let want = ids(&p["greedy"]["generated_ids"]);
        let n = want.len().min(16);
        let (got, logits) = greedy(&mut bf, &ids(&p["input_ids"]), n, &eos);
        let same = got.len() >= n && got[..n] == want[..n];
        agree += usize::from(same);
        for pair in p["logits"]["last_top20"].as_array().expect("top20") {
            let (id, v) = (
                pair["id"].as_u64().expect("id") as usize,
                pair["logit"].as_f64().expect("v") as f32,
            );
            worst = worst.max((logits[id] - v).abs());
        }
        println!(
            "bf16 prompt {i}: first {n} greedy tokens {}",
            if same { "agree" } else { "differ" }
        );
    }
    println!("bf16: {agree}/5 prompts agree on the first 16 tokens; top-20 max |logit error| = {worst:.3}");
    assert!(agree >= 3, "bf16 agreed on only {agree}/5 prompts");
    assert!(worst <= 0.5, "bf16 logit error {worst}");
}

/// Log-probability of `token` under a logits row.
fn logprob(row: &[f32], token: u32) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
    row[token as usize] as f64 - max - sum.ln()
}

/// Logits of every position of `ids` after the first `from` (one prefill step).
fn all_logits(m: &mut CudaModel, ids: &[u32], from: usize) -> Vec<f32> {
    let table: Vec<u32> = (0..32).collect();
    let meta = AttnMeta {
        positions: (0..ids.len() as u32).collect(),
        slot_mapping: (0..ids.len() as u32).collect(),
        seqs: vec![SeqAttn {
            q_start: 0,
            q_len: ids.len(),
            ctx_len: ids.len(),
            block_table: table,
        }],
        logit_rows: (from..ids.len()).collect(),
    };
    m.forward(ids, &meta).expect("forward")
}

/// Issue 18 must-show 4, quality: SmolLM2 with f32 weights and bf16 compute, 12 prompts,
/// 64 greedy tokens with an fp8 KV cache against the bf16 cache. At least 8 of the 12 texts
/// must be equal; the mean |Δ logprob| of the bf16 run's tokens, scored under both caches
/// over the same sequence, is reported.
#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -p kr-cuda --test smollm2 -- --ignored"]
fn fp8_kv_cache_keeps_most_greedy_texts() {
    let Some(mut bf) = load_with(DType::Bf16, true, false) else {
        return;
    };
    let path = test_models::path(test_models::SMOLLM2).expect("model");
    let file = kr_model::gguf::GgufFile::open(&path).expect("gguf");
    let tok = kr_model::Tokenizer::from_gguf(&file).expect("tokenizer");
    let prompts = [
        "The capital of France is",
        "Once upon a time, in a small village,",
        "To make a cup of tea, you first",
        "The three primary colours are",
        "def fibonacci(n):",
        "Water boils at a temperature of",
        "The largest planet in our solar system is",
        "My favourite book is",
        "In 1969, astronauts",
        "A haiku about the sea:",
        "The recipe calls for two eggs,",
        "Machine learning is",
    ];
    let eos: Vec<u32> = Vec::new(); // 64 tokens each, end-of-sequence or not
    let runs: Vec<(Vec<u32>, Vec<u32>)> = prompts
        .iter()
        .map(|p| {
            let ids = tok.encode(p, tok.add_bos).expect("encode");
            let (out, _) = greedy(&mut bf, &ids, 64, &eos);
            (ids, out)
        })
        .collect();
    let bf_scores: Vec<Vec<f32>> = runs
        .iter()
        .map(|(ids, out)| {
            all_logits(
                &mut bf,
                &[ids.as_slice(), &out[..63]].concat(),
                ids.len() - 1,
            )
        })
        .collect();
    drop(bf);
    let Some(mut f8) = load_with(DType::Bf16, true, true) else {
        return;
    };
    let (mut equal, mut dsum, mut dn) = (0, 0f64, 0usize);
    let vocab = bf_scores[0].len() / 64;
    for (i, (ids, out)) in runs.iter().enumerate() {
        let (got, _) = greedy(&mut f8, ids, 64, &eos);
        equal += usize::from(&got == out);
        let scores = all_logits(
            &mut f8,
            &[ids.as_slice(), &out[..63]].concat(),
            ids.len() - 1,
        );
        for (j, &t) in out.iter().enumerate() {
            let (a, b) = (
                &bf_scores[i][j * vocab..(j + 1) * vocab],
                &scores[j * vocab..(j + 1) * vocab],
            );
            dsum += (logprob(a, t) - logprob(b, t)).abs();
            dn += 1;
        }
        println!(
            "prompt {i}: fp8 text {}",
            if &got == out { "equal" } else { "differs" }
        );
    }
    println!("fp8 KV: {equal}/12 greedy texts equal to bf16 KV; mean |Δ logprob| of the chosen tokens {:.4}", dsum / dn as f64);
    assert!(equal >= 8, "only {equal}/12 texts equal");
}
