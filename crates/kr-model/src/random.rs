//! Random weights of real model shapes (`--random-weights --arch NAME`): the published
//! configurations of a few models, filled with seeded noise. For speed work where the real
//! weights cannot travel (they are gigabytes); the output text is meaningless by design.
//!
//! Invariant: the same arch, dtype and seed give the same bytes on every machine.

use crate::config::{Llama3RopeScaling, ModelConfig, RopeStyle};
use crate::quant::GgmlType;
use crate::weights::{LayerWeights, ModelWeights, RawTensor, TensorBytes};
use std::sync::Arc;

/// The architectures `--arch` accepts.
pub const ARCHES: [&str; 4] = ["llama-3.1-8b", "llama-3.2-1b", "qwen2.5-7b", "qwen2.5-0.5b"];

/// The published configuration of `arch` (see [`ARCHES`]).
pub fn arch_config(arch: &str) -> Option<ModelConfig> {
    let llama3 = |layers, hidden, heads, kv, inter, tie, factor| ModelConfig {
        architecture: "llama".into(),
        vocab_size: 128_256,
        hidden_size: hidden,
        num_layers: layers,
        num_heads: heads,
        num_kv_heads: kv,
        head_dim: hidden / heads,
        intermediate_size: inter,
        rope_theta: 500_000.0,
        rope_style: RopeStyle::HalfSplit,
        rope_scaling: Some(Llama3RopeScaling {
            factor,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        }),
        rms_norm_eps: 1e-5,
        max_context: 131_072,
        tie_embeddings: tie,
    };
    let qwen = |layers, hidden, heads, kv, inter, tie| ModelConfig {
        architecture: "qwen2".into(),
        vocab_size: 152_064,
        hidden_size: hidden,
        num_layers: layers,
        num_heads: heads,
        num_kv_heads: kv,
        head_dim: hidden / heads,
        intermediate_size: inter,
        rope_theta: 1_000_000.0,
        rope_style: RopeStyle::HalfSplit,
        rope_scaling: None,
        rms_norm_eps: 1e-6,
        max_context: 32_768,
        tie_embeddings: tie,
    };
    Some(match arch {
        "llama-3.1-8b" => llama3(32, 4096, 32, 8, 14_336, false, 8.0),
        "llama-3.2-1b" => llama3(16, 2048, 32, 8, 8192, true, 32.0),
        "qwen2.5-7b" => qwen(28, 3584, 28, 4, 18_944, false),
        "qwen2.5-0.5b" => ModelConfig {
            vocab_size: 151_936,
            ..qwen(24, 896, 14, 2, 4864, true)
        },
        _ => return None,
    })
}

/// Weights of `config` filled with seeded noise of standard deviation ~0.02 (norms are 1),
/// stored as `ty` (F32 or BF16). Qwen2 shapes get q/k/v biases, as the real models have.
pub fn random_weights(config: &ModelConfig, ty: GgmlType, seed: u64) -> ModelWeights {
    let (h, kv) = (config.hidden_size, config.num_kv_heads * config.head_dim);
    let q = config.num_heads * config.head_dim;
    let mut n = 0u64;
    let mut mat = |name: String, rows: usize, cols: usize| {
        n += 1;
        noise_tensor(
            &name,
            ty,
            rows,
            cols,
            seed.wrapping_mul(1_000_003).wrapping_add(n),
        )
    };
    let bias = config.architecture == "qwen2";
    let layers = (0..config.num_layers)
        .map(|i| LayerWeights {
            attn_norm: vec![1.0; h],
            wq: mat(format!("blk.{i}.attn_q"), q, h),
            wk: mat(format!("blk.{i}.attn_k"), kv, h),
            wv: mat(format!("blk.{i}.attn_v"), kv, h),
            wo: mat(format!("blk.{i}.attn_output"), h, q),
            q_bias: bias.then(|| vec![0.01; q]),
            k_bias: bias.then(|| vec![0.01; kv]),
            v_bias: bias.then(|| vec![0.01; kv]),
            q_norm: None,
            k_norm: None,
            ffn_norm: vec![1.0; h],
            w_gate: mat(format!("blk.{i}.ffn_gate"), config.intermediate_size, h),
            w_up: mat(format!("blk.{i}.ffn_up"), config.intermediate_size, h),
            w_down: mat(format!("blk.{i}.ffn_down"), h, config.intermediate_size),
        })
        .collect();
    ModelWeights {
        embedding: mat("token_embd".into(), config.vocab_size, h),
        layers,
        final_norm: vec![1.0; h],
        lm_head: (!config.tie_embeddings).then(|| mat("output".into(), config.vocab_size, h)),
        config: config.clone(),
    }
}

/// A `rows × cols` tensor of uniform noise in ±0.035 (std ≈ 0.02), filled on all cores.
fn noise_tensor(name: &str, ty: GgmlType, rows: usize, cols: usize, seed: u64) -> RawTensor {
    assert!(
        matches!(ty, GgmlType::F32 | GgmlType::BF16),
        "random weights are F32 or BF16"
    );
    let elem = if ty == GgmlType::F32 { 4 } else { 2 };
    let mut bytes = vec![0u8; rows * cols * elem];
    let threads = std::thread::available_parallelism().map_or(4, |n| n.get());
    let chunk = bytes.len().div_ceil(threads).div_ceil(elem) * elem;
    std::thread::scope(|s| {
        for (c, part) in bytes.chunks_mut(chunk.max(elem)).enumerate() {
            s.spawn(move || fill_noise(part, elem, seed ^ ((c as u64 + 1) << 40)));
        }
    });
    RawTensor {
        name: name.into(),
        ty,
        rows,
        cols,
        bytes: TensorBytes::Owned(Arc::new(bytes)),
    }
}

fn fill_noise(out: &mut [u8], elem: usize, seed: u64) {
    let mut x = seed | 1;
    for v in out.chunks_exact_mut(elem) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let u = (x >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
        let f = (u - 0.5) * 0.07;
        if elem == 4 {
            v.copy_from_slice(&f.to_le_bytes());
        } else {
            v.copy_from_slice(&half::bf16::from_f32(f).to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_shapes() {
        let c = arch_config("llama-3.1-8b").unwrap();
        assert_eq!(
            (c.num_layers, c.hidden_size, c.intermediate_size),
            (32, 4096, 14_336)
        );
        assert_eq!((c.num_kv_heads, c.head_dim), (8, 128));
        let q = arch_config("qwen2.5-0.5b").unwrap();
        assert_eq!((q.num_heads, q.num_kv_heads, q.head_dim), (14, 2, 64));
        assert!(arch_config("gpt-5").is_none());
    }

    #[test]
    fn seeded_and_small() {
        let mut c = arch_config("qwen2.5-0.5b").unwrap();
        c.num_layers = 1;
        c.vocab_size = 64;
        let a = random_weights(&c, GgmlType::BF16, 7);
        let b = random_weights(&c, GgmlType::BF16, 7);
        assert_eq!(
            a.layers[0].wq.bytes.as_slice(),
            b.layers[0].wq.bytes.as_slice()
        );
        let w = a.layers[0].w_up.to_f32();
        assert!(w.iter().all(|v| v.abs() < 0.04));
        let mean_sq = w.iter().map(|v| v * v).sum::<f32>() / w.len() as f32;
        assert!(
            (mean_sq.sqrt() - 0.02).abs() < 0.003,
            "std {}",
            mean_sq.sqrt()
        );
        assert!(a.layers[0].q_bias.is_some());
    }
}
