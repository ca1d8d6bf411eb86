//! MLX-quantised checkpoints (`mlx_lm.convert -q`) of the tiny Hugging Face models, loaded from
//! their directories and compared with MLX's own logits at every position. Checkpoints and
//! references: tests/reference/mlx-tiny, made by scripts/make_mlx_fixtures.py.
//!
//! Tolerance (absolute, every logit of every position): 1e-4. The reference is MLX with the
//! model's floats cast to f32 (exact for its bf16/f16 scales, biases and norms), so both sides
//! decode the same integers, scales and biases and compute in f32; only the summation order
//! differs (measured: under 1e-5). A wrong group, bit order or scale is off by whole units.

mod common;

use kr_engine::load_model;
use serde_json::Value;
use std::path::PathBuf;

const TOLERANCE: f32 = 1e-4;

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/reference/mlx-tiny")
        .join(name)
}

fn max_error(name: &str) -> f32 {
    let model = load_model(&dir(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let r: Value = serde_json::from_str(
        &std::fs::read_to_string(dir(name).join("reference.json")).expect("reference"),
    )
    .expect("reference JSON");
    let ids: Vec<u32> = r["input_ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_u64().expect("id") as u32)
        .collect();
    let ours = common::logits_at(&model, &ids, &(0..ids.len()).collect::<Vec<_>>());
    let reference = r["logits"].as_array().expect("logits");
    assert_eq!(ours.len(), reference.len(), "{name}: positions");
    let mut worst = 0f32;
    for (row, refrow) in ours.iter().zip(reference) {
        let refrow = refrow.as_array().expect("row");
        assert_eq!(row.len(), refrow.len(), "{name}: vocab");
        for (a, b) in row.iter().zip(refrow) {
            worst = worst.max((a - b.as_f64().expect("logit") as f32).abs());
        }
    }
    println!("{name}: max |logit error| vs MLX = {worst:.3e}");
    worst
}

#[test]
fn mlx_4bit_group_32_llama_matches_mlx() {
    let e = max_error("llama-q4-g32");
    assert!(e <= TOLERANCE, "{e}");
}

#[test]
fn mlx_8bit_group_64_llama_matches_mlx() {
    let e = max_error("llama-q8-g64");
    assert!(e <= TOLERANCE, "{e}");
}

#[test]
fn mlx_4bit_group_64_qwen2_with_biases_matches_mlx() {
    let e = max_error("qwen2-q4-g64");
    assert!(e <= TOLERANCE, "{e}");
}

#[test]
fn quantised_weights_stay_encoded_when_loaded() {
    let model = load_model(&dir("llama-q4-g32")).expect("load");
    let wq = &model.weights.layers[0].wq;
    assert_eq!(wq.ty.name(), "MLX 4-bit");
    // 64 columns in groups of 32: 2 groups a row of 2 + 2 + 16 bytes (bf16 scale and bias).
    assert_eq!(wq.bytes.as_slice().len(), wq.rows * 2 * 20);
}
