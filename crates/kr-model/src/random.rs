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
        attention: Default::default(),
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
        attention: Default::default(),
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

/// How random weights are stored: one type for every matrix, or the mix llama.cpp's
/// quantiser writes for a `Q4_K_M` file (Q6_K for the output matrix and for `attn_v` and
/// `ffn_down` in the first and last eighth of the layers and every third layer between,
/// Q4_K elsewhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    Uniform(GgmlType),
    Q4KM,
}

impl Storage {
    /// `f32`, `bf16`, a GGUF type name (`q8_0`, `q4_k`, …) or `q4_k_m`.
    pub fn parse(name: &str) -> Option<Self> {
        let upper = name.to_ascii_uppercase();
        if upper == "Q4_K_M" {
            return Some(Self::Q4KM);
        }
        GgmlType::ALL
            .into_iter()
            .find(|t| t.name() == upper && *t != GgmlType::F16)
            .map(Self::Uniform)
    }

    /// The type of matrix `name` (`blk.N.attn_v`, `output`, …) of a model of `layers` layers.
    fn type_of(self, name: &str, layers: usize) -> GgmlType {
        match self {
            Self::Uniform(t) => t,
            Self::Q4KM => {
                let layer = name
                    .strip_prefix("blk.")
                    .and_then(|r| r.split('.').next())
                    .and_then(|i| i.parse::<usize>().ok());
                let more_bits =
                    |i: usize| i < layers / 8 || i >= 7 * layers / 8 || (i - layers / 8) % 3 == 2;
                let wide = name == "output"
                    || ((name.ends_with(".attn_v") || name.ends_with(".ffn_down"))
                        && layer.is_some_and(more_bits));
                if wide {
                    GgmlType::Q6K
                } else {
                    GgmlType::Q4K
                }
            }
        }
    }
}

/// Weights of `config` filled with seeded noise of standard deviation ~0.02 (norms are 1),
/// stored as `ty`. Qwen2 shapes get q/k/v biases, as the real models have.
pub fn random_weights(config: &ModelConfig, ty: GgmlType, seed: u64) -> ModelWeights {
    random_weights_stored(config, Storage::Uniform(ty), seed)
}

/// As [`random_weights`], each matrix stored as `storage` says. Quantised matrices are random
/// blocks (see [`encoded_noise`]), so every backend decodes the same values.
pub fn random_weights_stored(config: &ModelConfig, storage: Storage, seed: u64) -> ModelWeights {
    let (h, kv) = (config.hidden_size, config.num_kv_heads * config.head_dim);
    let q = config.num_heads * config.head_dim;
    let mut n = 0u64;
    let mut mat = |name: String, rows: usize, cols: usize| {
        n += 1;
        let ty = storage.type_of(&name, config.num_layers);
        let seed = seed.wrapping_mul(1_000_003).wrapping_add(n);
        if ty.is_quantized() {
            encoded_noise(&name, ty, rows, cols, seed)
        } else {
            noise_tensor(&name, ty, rows, cols, seed)
        }
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
            moe: None,
            post_attn_norm: None,
            post_ffn_norm: None,
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

/// A `rows × cols` tensor of random blocks of `ty` (`cols` a multiple of its block size): random
/// bits, except the f16 scale fields, which are set so that the values have a standard
/// deviation of about 0.02 (random bits there would give infinities and NaNs).
pub fn encoded_noise(name: &str, ty: GgmlType, rows: usize, cols: usize, seed: u64) -> RawTensor {
    assert_eq!(cols % ty.block_elems(), 0, "{name}: cols not whole blocks");
    let bb = ty.block_bytes();
    let mut bytes = vec![0u8; ty.bytes_for(rows * cols)];
    let threads = std::thread::available_parallelism().map_or(4, |n| n.get());
    let chunk = (bytes.len() / bb).div_ceil(threads).max(1) * bb;
    // Values are linear in the scale fields: draw them in ±[0.5, 1), measure the spread on the
    // first blocks, then scale every field by 0.02 / spread.
    let fill = |part: &mut [u8], c: usize, k: f32| {
        fill_noise(part, 1, seed ^ ((c as u64 + 1) << 40));
        let mut x = seed.wrapping_add(c as u64) | 1;
        for block in part.chunks_exact_mut(bb) {
            for &off in ty.scale_fields() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let u = 0.5 + (x >> 40) as f32 / (1u64 << 25) as f32;
                let v = if x & 1 == 0 { u } else { -u };
                block[off..off + 2].copy_from_slice(&half::f16::from_f32(v * k).to_le_bytes());
            }
        }
    };
    let sample_blocks = (bytes.len() / bb).min(64);
    let mut sample = bytes[..sample_blocks * bb].to_vec();
    fill(&mut sample, 0, 1.0);
    let mut values = vec![0f32; sample_blocks * ty.block_elems()];
    crate::quant::dequantize(ty, &sample, &mut values);
    let spread = (values.iter().map(|v| v * v).sum::<f32>() / values.len() as f32).sqrt();
    let k = 0.02 / spread.max(1e-6);
    std::thread::scope(|s| {
        for (c, part) in bytes.chunks_mut(chunk).enumerate() {
            s.spawn(move || fill(part, c, k));
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
        if elem == 1 {
            v[0] = (x >> 32) as u8;
        } else if elem == 4 {
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

    #[test]
    fn encoded_noise_has_the_wanted_spread_and_q4_k_m_its_mix() {
        for ty in GgmlType::ALL.into_iter().filter(|t| t.is_quantized()) {
            let t = encoded_noise("w", ty, 16, 512, 3);
            let v = t.to_f32();
            let std = (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
            assert!(v.iter().all(|x| x.is_finite()), "{}", ty.name());
            assert!((0.01..0.04).contains(&std), "{}: std {std}", ty.name());
        }
        let mut c = arch_config("llama-3.2-1b").unwrap();
        (c.vocab_size, c.hidden_size, c.intermediate_size) = (256, 256, 512);
        (c.num_heads, c.num_kv_heads, c.head_dim) = (4, 2, 64);
        let w = random_weights_stored(&c, Storage::parse("q4_k_m").unwrap(), 1);
        assert_eq!(w.layers[0].wv.ty, GgmlType::Q6K);
        assert_eq!(w.layers[1].wv.ty, GgmlType::Q6K);
        assert_eq!(w.layers[2].wv.ty, GgmlType::Q4K);
        assert_eq!(w.layers[4].wv.ty, GgmlType::Q6K);
        assert_eq!(w.layers[0].wq.ty, GgmlType::Q4K);
        assert_eq!(w.layers[15].w_down.ty, GgmlType::Q6K);
        assert_eq!(
            Storage::parse("Q8_0"),
            Some(Storage::Uniform(GgmlType::Q8_0))
        );
        assert_eq!(Storage::parse("q9"), None);
    }
}
