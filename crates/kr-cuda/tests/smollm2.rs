//! SmolLM2-135M-Instruct on the GPU against the transformers reference
//! (tests/reference/smollm2_hf_reference.json): in f32 the 32-token greedy continuations must
//! equal the reference (as the CPU backend's do); in bf16 the first 16 greedy tokens must agree
//! on most prompts and the last position's top-20 logits stay within 0.5 (logits are O(10)).
//! Ignored unless asked for (`cargo test -p kr-cuda --test smollm2 -- --ignored`, on a GPU
//! machine; without a GPU it then fails); skipped with one line without the test models
//! (`$KR_TEST_MODELS`, else ../shared/models; see tests/support/test_models.rs).

use kr_cuda::{CudaModel, CudaModelOptions, DType};
use kr_model::{AttnMeta, SeqAttn};
use serde_json::Value;

#[path = "../../../tests/support/test_models.rs"]
mod test_models;

fn load(dtype: DType) -> Option<CudaModel> {
    if let Err(e) = kr_cuda::probe(0) {
        panic!("this test needs an NVIDIA GPU; kr_cuda::probe(0) failed: {e}");
    }
    let path = test_models::path(test_models::SMOLLM2)?;
    let file = kr_model::gguf::GgufFile::open(&path).expect("gguf");
    let w = kr_model::gguf_model::weights_from_gguf(&file).expect("weights");
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
        kv_fp8: false,
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
