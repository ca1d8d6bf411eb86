//! The model configuration the decoder is parametrised by, and RoPE frequencies.
//!
//! One decoder serves Llama, Qwen2/3, Mistral and SmolLM: the differences are fields here
//! (rotation style, qkv bias, q/k norm, tied embeddings, rope scaling), never separate files.

use serde::Serialize;

/// How RoPE pairs the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RopeStyle {
    /// Pairs (2i, 2i+1): llama.cpp's "NORM", used with GGUF llama files whose Q/K weights
    /// were permuted by the converter.
    Interleaved,
    /// Pairs (i, i + d/2): Hugging Face's rotate_half ("NEOX").
    HalfSplit,
}

/// Llama 3 style frequency scaling (`rope_scaling.rope_type == "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Llama3RopeScaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position_embeddings: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelConfig {
    pub architecture: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub rope_theta: f32,
    pub rope_style: RopeStyle,
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub rms_norm_eps: f32,
    pub max_context: usize,
    pub tie_embeddings: bool,
}

impl ModelConfig {
    /// Inverse frequencies of the rotary embedding, one per dimension pair.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim;
        let base: Vec<f64> = (0..d / 2)
            .map(|i| 1.0 / (self.rope_theta as f64).powf(2.0 * i as f64 / d as f64))
            .collect();
        match self.rope_scaling {
            None => base.into_iter().map(|f| f as f32).collect(),
            Some(s) => base
                .into_iter()
                .map(|f| llama3_scale(f, &s) as f32)
                .collect(),
        }
    }

    /// Bytes of KV cache per token (f32 K and V over all layers).
    pub fn kv_bytes_per_token(&self) -> usize {
        2 * self.num_layers * self.num_kv_heads * self.head_dim * std::mem::size_of::<f32>()
    }
}

/// Llama 3.1's piecewise frequency scaling, as in the published reference.
fn llama3_scale(freq: f64, s: &Llama3RopeScaling) -> f64 {
    let old = s.original_max_position_embeddings as f64;
    let low_wavelen = old / s.low_freq_factor as f64;
    let high_wavelen = old / s.high_freq_factor as f64;
    let wavelen = 2.0 * std::f64::consts::PI / freq;
    if wavelen < high_wavelen {
        freq
    } else if wavelen > low_wavelen {
        freq / s.factor as f64
    } else {
        let smooth = (old / wavelen - s.low_freq_factor as f64)
            / (s.high_freq_factor as f64 - s.low_freq_factor as f64);
        (1.0 - smooth) * freq / s.factor as f64 + smooth * freq
    }
}
