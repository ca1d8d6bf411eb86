//! The model configuration the decoder is parametrised by, and RoPE frequencies.
//!
//! One decoder serves Llama, Qwen2/3, Mistral, Phi-3 and SmolLM: the differences are fields
//! here (rotation style, qkv bias, q/k norm, tied embeddings, rope scaling, sliding window),
//! never separate files.

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

/// Context-extension RoPE scalings other than Llama 3's.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub enum RopeExtension {
    #[default]
    None,
    /// YaRN (`rope_type: yarn`, Qwen's long-context configs): per dimension pair, a ramp
    /// between the original frequency (fast dimensions) and the frequency divided by
    /// `factor` (slow ones).
    Yarn {
        factor: f32,
        original_max_position_embeddings: usize,
        beta_fast: f32,
        beta_slow: f32,
        truncate: bool,
    },
    /// LongRoPE (`rope_type: longrope` / `su`, Phi-3): a divisor per dimension pair, the long
    /// set when the model's context exceeds the original one (as llama.cpp and
    /// transformers do for sequences past it).
    LongRope {
        short_factor: Vec<f32>,
        long_factor: Vec<f32>,
        original_max_position_embeddings: usize,
    },
    /// A divisor per dimension pair, as llama.cpp's `rope_freqs.weight` tensor stores Llama
    /// 3.1's scaling in GGUF files.
    FreqFactors(Vec<f32>),
    /// Every frequency divided by the factor (`rope_type: linear`, Gemma 3's global layers).
    Linear(f32),
}

/// What a family does beyond the Llama block: RoPE extensions, sliding windows, and Gemma's
/// scaled embeddings, query scale, soft-capping, GeGLU and per-layer-type RoPE base.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AttentionExt {
    pub rope: RopeExtension,
    /// YaRN's and LongRoPE's factor on cos and sin; attention logits scale by its square.
    /// `None`: 1.
    pub rope_attention_factor: Option<f32>,
    /// Keys a query sees on sliding-window layers (itself included); `None`: all.
    pub sliding_window: Option<usize>,
    /// Which layers slide when a window is set; empty: all of them.
    pub sliding_layers: Vec<bool>,
    /// Embeddings multiplied by this (Gemma: `sqrt(hidden_size)`).
    pub embed_scale: Option<f32>,
    /// Attention logits scale by `query_scale^-1/2` instead of `head_dim^-1/2` (Gemma's
    /// `query_pre_attn_scalar`).
    pub query_scale: Option<f32>,
    /// `cap · tanh(x / cap)` on attention logits (Gemma 2) and on the output logits.
    pub attn_logit_softcap: Option<f32>,
    pub final_logit_softcap: Option<f32>,
    /// The feed-forward gate is GELU (tanh approximation) instead of SiLU (Gemma).
    pub gelu_ffn: bool,
    /// Sliding-window layers rotate with this base and no scaling (Gemma 3's local layers).
    pub local_rope_theta: Option<f32>,
    /// Only the first this many dimensions of each head rotate (`partial_rotary_factor`,
    /// Phi-4-mini); `None`: all of them.
    pub rotary_dim: Option<usize>,
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
    pub attention: AttentionExt,
}

impl ModelConfig {
    /// Inverse frequencies of the rotary embedding, one per rotated dimension pair.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let d = self.attention.rotary_dim.unwrap_or(self.head_dim);
        let base: Vec<f64> = (0..d / 2)
            .map(|i| 1.0 / (self.rope_theta as f64).powf(2.0 * i as f64 / d as f64))
            .collect();
        let base = match self.rope_scaling {
            None => base,
            Some(s) => base.into_iter().map(|f| llama3_scale(f, &s)).collect(),
        };
        match &self.attention.rope {
            RopeExtension::None => base.into_iter().map(|f| f as f32).collect(),
            RopeExtension::Yarn {
                factor,
                original_max_position_embeddings: orig,
                beta_fast,
                beta_slow,
                truncate,
            } => {
                let ramp = yarn_ramp(
                    d,
                    self.rope_theta as f64,
                    *orig,
                    *beta_fast,
                    *beta_slow,
                    *truncate,
                );
                base.into_iter()
                    .zip(ramp)
                    .map(|(f, r)| (f / *factor as f64 * r + f * (1.0 - r)) as f32)
                    .collect()
            }
            RopeExtension::Linear(factor) => base
                .into_iter()
                .map(|f| (f / *factor as f64) as f32)
                .collect(),
            RopeExtension::FreqFactors(factors) => base
                .into_iter()
                .zip(factors)
                .map(|(f, &e)| (f / e as f64) as f32)
                .collect(),
            RopeExtension::LongRope {
                short_factor,
                long_factor,
                original_max_position_embeddings: orig,
            } => {
                let ext = match self.max_context > *orig {
                    true => long_factor,
                    false => short_factor,
                };
                base.into_iter()
                    .zip(ext)
                    .map(|(f, &e)| (f / e as f64) as f32)
                    .collect()
            }
        }
    }

    /// The factor on attention logits: `1/sqrt(head_dim)`, times the square of the RoPE
    /// attention factor (YaRN, LongRoPE multiply both cos and sin by it).
    pub fn attention_scale(&self) -> f32 {
        // With partial rotation the factor scales only the rotated part: the rotation
        // applies it ([`crate::backend::Rope::scale`]).
        let af = match self.partial_rotary() {
            true => 1.0,
            false => self.attention.rope_attention_factor.unwrap_or(1.0),
        };
        let d = self.attention.query_scale.unwrap_or(self.head_dim as f32);
        af * af / d.sqrt()
    }

    /// Whether only part of each head rotates.
    pub fn partial_rotary(&self) -> bool {
        self.attention
            .rotary_dim
            .is_some_and(|r| r != self.head_dim)
    }

    /// The configuration sliding-window layers rotate with: Gemma 3's local base without
    /// scaling, or this one.
    pub fn local_rope_config(&self) -> Option<ModelConfig> {
        let theta = self.attention.local_rope_theta?;
        let mut local = self.clone();
        local.rope_theta = theta;
        local.rope_scaling = None;
        local.attention.rope = RopeExtension::None;
        Some(local)
    }

    /// The sliding window of layer `layer`, if it has one.
    pub fn window_of_layer(&self, layer: usize) -> Option<usize> {
        let a = &self.attention;
        let slides = a.sliding_layers.is_empty() || a.sliding_layers.get(layer) == Some(&true);
        a.sliding_window.filter(|_| slides)
    }

    /// Bytes of KV cache per token (f32 K and V over all layers).
    pub fn kv_bytes_per_token(&self) -> usize {
        2 * self.num_layers * self.num_kv_heads * self.head_dim * std::mem::size_of::<f32>()
    }
}

/// YaRN's ramp per dimension pair: 1 where the frequency is interpolated (divided by the
/// factor), 0 where it is kept, linear in between (transformers' `_compute_yarn_parameters`).
fn yarn_ramp(d: usize, base: f64, orig: usize, fast: f32, slow: f32, truncate: bool) -> Vec<f64> {
    let dim = d as f64;
    let correction = |rotations: f64| {
        dim * (orig as f64 / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln())
    };
    let (mut low, mut high) = (correction(fast as f64), correction(slow as f64));
    if truncate {
        (low, high) = (low.floor(), high.ceil());
    }
    let (low, mut high) = (low.max(0.0), high.min(dim - 1.0));
    if low == high {
        high += 0.001;
    }
    (0..d / 2)
        .map(|i| ((i as f64 - low) / (high - low)).clamp(0.0, 1.0))
        .collect()
}

/// YaRN's default attention factor for a scaling `factor`.
pub fn yarn_attention_factor(factor: f32) -> f32 {
    match factor <= 1.0 {
        true => 1.0,
        false => 0.1 * factor.ln() + 1.0,
    }
}

/// LongRoPE's default attention factor for a scaling `factor` of an original context.
pub fn longrope_attention_factor(factor: f32, orig: usize) -> f32 {
    match factor <= 1.0 {
        true => 1.0,
        false => (1.0 + factor.ln() / (orig as f32).ln()).sqrt(),
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
