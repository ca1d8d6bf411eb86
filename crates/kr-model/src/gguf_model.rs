//! Builds a [`ModelConfig`] and [`ModelWeights`] from an open GGUF file (llama, qwen2,
//! qwen3, qwen3moe, phi3, gemma2, gemma3 architectures as llama.cpp's converter writes them;
//! llama with experts is Mixtral), checking every tensor's presence and shape.
//! Mixture-of-Experts layers are read by [`crate::gguf_moe`], Gemma's keys and post-block
//! norms by [`crate::gguf_gemma`].
//!
//! Beyond the plain keys, this reads what llama.cpp's converter writes for context extension
//! and windows:
//! - YaRN: `<arch>.rope.scaling.type` = "yarn", `rope.scaling.factor`,
//!   `rope.scaling.original_context_length`, and when the Hugging Face config set them
//!   `rope.scaling.yarn_beta_fast` / `yarn_beta_slow` / `yarn_attn_factor` (transformers'
//!   `attention_factor`, which replaces the default `0.1 ln(factor) + 1`);
//!   `yarn_log_multiplier` (mscale_all_dim) and an extrapolation mix other than 1 are refused;
//! - LongRoPE (Phi-3): the `rope_factors_long.weight` / `rope_factors_short.weight` tensors
//!   (the long set when the context exceeds `rope.scaling.original_context_length`) and
//!   `rope.scaling.attn_factor`;
//! - `<arch>.attention.sliding_window` (0: none) on every layer, or on the layers of
//!   `attention.sliding_window_pattern`. The converter writes it for phi3 only of these
//!   families (not for Mistral, which becomes `llama`, nor for Qwen2 / Qwen3). llama.cpp
//!   itself turns Phi-3's window off; kr-serve applies it, as transformers does.
//!
//! Phi-3's fused `attn_qkv` (q, k, v rows) and `ffn_up` (gate rows, then up rows: llama.cpp's
//! unswapped swiglu gates with the first half) are split into row ranges of the same bytes.

use crate::config::{
    longrope_attention_factor, yarn_attention_factor, AttentionExt, ModelConfig, RopeExtension,
    RopeStyle,
};
use crate::error::{ModelError, Result};
use crate::gguf::{GgufFile, TensorInfo, Value};
use crate::gguf_moe::MoeSpec;
use crate::weights::{LayerWeights, ModelWeights, RawTensor, TensorBytes};

const SUPPORTED: &str =
    "llama (Mixtral included), qwen2, qwen3, qwen3moe, phi3, gemma2, gemma3 (GGUF)";

pub(crate) fn meta_err(f: &GgufFile, key: &str, expected: &'static str) -> ModelError {
    ModelError::Metadata {
        path: f.path.clone(),
        key: key.to_string(),
        expected,
    }
}

/// An optional number; present with another type is an error.
pub(crate) fn opt_f64(f: &GgufFile, key: &str) -> Result<Option<f64>> {
    match f.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| meta_err(f, key, "number")),
    }
}

/// An optional non-negative integer; present with another type is an error.
pub(crate) fn opt_usize(f: &GgufFile, key: &str) -> Result<Option<usize>> {
    match f.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(|v| Some(v as usize))
            .ok_or_else(|| meta_err(f, key, "integer")),
    }
}

/// Reads the architecture hyper-parameters from GGUF metadata.
pub fn config_from_gguf(f: &GgufFile) -> Result<ModelConfig> {
    let arch = f.get_str("general.architecture")?.to_string();
    let rope_style = match arch.as_str() {
        // The llama converter permutes Q/K for interleaved rotation; qwen and phi3 files are
        // not permuted (llama.cpp rotates them NEOX style).
        "llama" => RopeStyle::Interleaved,
        "qwen2" | "qwen3" | "qwen3moe" | "phi3" | "gemma2" | "gemma3" => RopeStyle::HalfSplit,
        _ => {
            return Err(ModelError::Architecture {
                path: f.path.clone(),
                arch,
                supported: SUPPORTED,
            })
        }
    };
    let key = |k: &str| format!("{arch}.{k}");
    let hidden = f.get_u64(&key("embedding_length"))? as usize;
    let num_heads = f.get_u64(&key("attention.head_count"))? as usize;
    let num_kv_heads = f
        .get(&key("attention.head_count_kv"))
        .and_then(|v| v.as_u64())
        .map_or(num_heads, |v| v as usize);
    let head_dim = f
        .get(&key("attention.key_length"))
        .and_then(|v| v.as_u64())
        .map_or(hidden / num_heads.max(1), |v| v as usize);
    // Fewer rotated dimensions than the head has: partial rotary embeddings (Phi-4-mini).
    let rotary = opt_usize(f, &key("rope.dimension_count"))?.unwrap_or(head_dim);
    if rotary == 0 || rotary % 2 != 0 || rotary > head_dim {
        return Err(meta_err(
            f,
            &key("rope.dimension_count"),
            "an even number of dimensions, at most the head dimension",
        ));
    }
    let embd = f.tensor("token_embd.weight")?;
    let vocab_size = f
        .get(&key("vocab_size"))
        .and_then(|v| v.as_u64())
        .map_or(embd.dims.get(1).copied().unwrap_or(0), |v| v as usize);
    let num_layers = f.get_u64(&key("block_count"))? as usize;
    let max_context = f.get_u64(&key("context_length"))? as usize;
    let rope_theta = f
        .get(&key("rope.freq_base"))
        .and_then(|v| v.as_f64())
        .unwrap_or(10_000.0) as f32;
    let (rope, rope_attention_factor) = rope_extension(f, &arch, rotary, max_context)?;
    let (sliding_window, sliding_layers) = sliding_window(f, &arch, num_layers)?;
    let family = match crate::gguf_gemma::is_gemma(&arch) {
        true => {
            crate::gguf_gemma::features(f, &arch, hidden, num_heads, head_dim, num_layers, &rope)?
        }
        false => AttentionExt::default(),
    };
    Ok(ModelConfig {
        vocab_size,
        hidden_size: hidden,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        intermediate_size: f.get_u64(&key("feed_forward_length"))? as usize,
        rope_theta,
        rope_style,
        rope_scaling: None,
        rms_norm_eps: f
            .get(&key("attention.layer_norm_rms_epsilon"))
            .and_then(|v| v.as_f64())
            .unwrap_or(1e-5) as f32,
        max_context,
        tie_embeddings: !f.tensors.contains_key("output.weight"),
        attention: AttentionExt {
            rope,
            rope_attention_factor,
            rotary_dim: (rotary != head_dim).then_some(rotary),
            sliding_window,
            sliding_layers,
            ..family
        },
        architecture: arch,
    })
}

/// YaRN and LongRoPE from `<arch>.rope.scaling.*` and the rope factor tensors, with the
/// attention factor on cos and sin (see the module notes).
fn rope_extension(
    f: &GgufFile,
    arch: &str,
    rotary_dim: usize,
    max_context: usize,
) -> Result<(RopeExtension, Option<f32>)> {
    let key = |k: &str| format!("{arch}.rope.scaling.{k}");
    let kind = match f.get(&key("type")) {
        None => None,
        Some(v) => Some(
            v.as_str()
                .ok_or_else(|| meta_err(f, &key("type"), "string"))?,
        ),
    };
    let factor = opt_f64(f, &key("factor"))?.map(|v| v as f32);
    // llama.cpp multiplies every rotation's cos and sin by it (YaRN's factor included).
    let attn_factor = opt_f64(f, &key("attn_factor"))?.map(|v| v as f32);
    let orig = opt_usize(f, &key("original_context_length"))?.unwrap_or(max_context);
    let has_factors = ["rope_factors_long.weight", "rope_factors_short.weight"]
        .iter()
        .any(|t| f.tensors.contains_key(*t));
    match kind {
        Some("yarn") => {
            if opt_f64(f, &key("yarn_log_multiplier"))?.is_some_and(|m| m != 0.0) {
                return Err(meta_err(
                    f,
                    &key("yarn_log_multiplier"),
                    "absent (YaRN with mscale_all_dim is not supported)",
                ));
            }
            if opt_f64(f, &key("yarn_ext_factor"))?.is_some_and(|e| e != 1.0) {
                return Err(meta_err(
                    f,
                    &key("yarn_ext_factor"),
                    "1 or absent (YaRN with another extrapolation mix is not supported)",
                ));
            }
            let factor = factor.ok_or_else(|| meta_err(f, &key("factor"), "number (YaRN)"))?;
            let beta = |k: &str, default: f32| -> Result<f32> {
                Ok(opt_f64(f, &key(k))?.map_or(default, |v| v as f32))
            };
            let given = opt_f64(f, &key("yarn_attn_factor"))?.map(|v| v as f32);
            let ext = RopeExtension::Yarn {
                factor,
                original_max_position_embeddings: orig,
                beta_fast: beta("yarn_beta_fast", 32.0)?,
                beta_slow: beta("yarn_beta_slow", 1.0)?,
                truncate: true,
            };
            let af = given.unwrap_or_else(|| yarn_attention_factor(factor));
            Ok((ext, Some(af * attn_factor.unwrap_or(1.0))))
        }
        None | Some("longrope") if has_factors || kind.is_some() => {
            let factors = |name: &str| -> Result<Vec<f32>> {
                let v = vector(f, name, rotary_dim / 2)?;
                if v.iter().any(|&x| !(x > 0.0 && x.is_finite())) {
                    return Err(meta_err(f, name, "positive rope factors"));
                }
                Ok(v)
            };
            let ext = RopeExtension::LongRope {
                short_factor: factors("rope_factors_short.weight")?,
                long_factor: factors("rope_factors_long.weight")?,
                original_max_position_embeddings: orig,
            };
            let scale = max_context as f32 / orig.max(1) as f32;
            let af = attn_factor.unwrap_or_else(|| longrope_attention_factor(scale, orig));
            Ok((ext, Some(af)))
        }
        None | Some("none") => Ok((freq_factors(f, rotary_dim)?, attn_factor)),
        // llama.cpp's default type; a factor of 1 (or none) does not scale.
        Some("linear") if factor.is_none_or(|x| x == 0.0 || x == 1.0) => {
            Ok((freq_factors(f, rotary_dim)?, attn_factor))
        }
        // Gemma 3's global layers (llama.cpp divides positions by the factor).
        Some("linear") if crate::gguf_gemma::is_gemma(arch) => Ok((
            RopeExtension::Linear(factor.unwrap_or(1.0)),
            attn_factor,
        )),
        Some(_) => Err(meta_err(
            f,
            &key("type"),
            "\"none\", \"yarn\" or \"longrope\" (linear scaling by a factor other than 1 is not supported)",
        )),
    }
}

/// Llama 3.1's scaling as llama.cpp's converter stores it: `rope_freqs.weight`, a divisor
/// per dimension pair.
fn freq_factors(f: &GgufFile, head_dim: usize) -> Result<RopeExtension> {
    if !f.tensors.contains_key("rope_freqs.weight") {
        return Ok(RopeExtension::None);
    }
    let v = vector(f, "rope_freqs.weight", head_dim / 2)?;
    if v.iter().any(|&x| !(x > 0.0 && x.is_finite())) {
        return Err(meta_err(
            f,
            "rope_freqs.weight",
            "positive rope frequency factors",
        ));
    }
    Ok(RopeExtension::FreqFactors(v))
}

/// `<arch>.attention.sliding_window` (0 or absent: none) and the layers it applies to:
/// `attention.sliding_window_pattern` as one flag per layer, or as llama.cpp's period `n`
/// (layer `i` slides when `i % n < n - 1`; 0: every layer); absent: every layer, or for
/// Gemma llama.cpp's default window and period ([`crate::gguf_gemma::sliding_defaults`]).
fn sliding_window(f: &GgufFile, arch: &str, layers: usize) -> Result<(Option<usize>, Vec<bool>)> {
    let key = |k: &str| format!("{arch}.attention.{k}");
    let gemma = crate::gguf_gemma::is_gemma(arch);
    let (default_window, default_period) = match gemma {
        true => crate::gguf_gemma::sliding_defaults(arch),
        false => (None, 0),
    };
    let window = match opt_usize(f, &key("sliding_window"))?.or(default_window) {
        None | Some(0) => return Ok((None, Vec::new())),
        Some(w) => w,
    };
    let period = |n: u64| (0..layers as u64).map(|i| i % n < n - 1).collect();
    let pattern_key = key("sliding_window_pattern");
    let sliding: Vec<bool> = match f.get(&pattern_key) {
        None if gemma => period(default_period),
        None => Vec::new(),
        Some(Value::Array(flags)) => {
            let flags: Option<Vec<bool>> = flags
                .iter()
                .map(|v| match v {
                    Value::Bool(b) => Some(*b),
                    _ => None,
                })
                .collect();
            match flags {
                Some(flags) if flags.len() == layers => flags,
                _ => return Err(meta_err(f, &pattern_key, "one bool per layer")),
            }
        }
        Some(v) => match v.as_u64() {
            Some(0) => Vec::new(),
            Some(n) => period(n),
            None => return Err(meta_err(f, &pattern_key, "one bool per layer, or a period")),
        },
    };
    if layers > 128 && (sliding.is_empty() || sliding.iter().any(|&s| s)) {
        return Err(meta_err(
            f,
            &key("sliding_window"),
            "0 or absent on models of more than 128 layers",
        ));
    }
    Ok((Some(window), sliding))
}

pub(crate) fn matrix(f: &GgufFile, name: &str, rows: usize, cols: usize) -> Result<RawTensor> {
    let info = f.tensor(name)?;
    check_shape(f, info, &[cols, rows])?;
    Ok(RawTensor {
        name: name.to_string(),
        ty: info.ty,
        rows,
        cols,
        bytes: TensorBytes::Mapped {
            map: f.map(),
            offset: info.offset,
            len: info.size,
        },
    })
}

pub(crate) fn check_shape(f: &GgufFile, info: &TensorInfo, expected: &[usize]) -> Result<()> {
    if info.dims != expected {
        return Err(ModelError::Shape {
            path: f.path.clone(),
            tensor: info.name.clone(),
            expected: expected.to_vec(),
            actual: info.dims.clone(),
        });
    }
    Ok(())
}

pub(crate) fn vector(f: &GgufFile, name: &str, len: usize) -> Result<Vec<f32>> {
    let t = matrix(f, name, 1, len).or_else(|_| {
        let info = f.tensor(name)?;
        check_shape(f, info, &[len])?;
        Ok::<_, ModelError>(RawTensor {
            name: name.to_string(),
            ty: info.ty,
            rows: 1,
            cols: len,
            bytes: TensorBytes::Mapped {
                map: f.map(),
                offset: info.offset,
                len: info.size,
            },
        })
    })?;
    Ok(t.to_f32())
}

fn optional_vector(f: &GgufFile, name: &str, len: usize) -> Result<Option<Vec<f32>>> {
    if f.tensors.contains_key(name) {
        vector(f, name, len).map(Some)
    } else {
        Ok(None)
    }
}

fn layer(f: &GgufFile, c: &ModelConfig, moe: Option<&MoeSpec>, i: usize) -> Result<LayerWeights> {
    let n = |s: &str| format!("blk.{i}.{s}");
    let (d, q, kv, ff) = (
        c.hidden_size,
        c.num_heads * c.head_dim,
        c.num_kv_heads * c.head_dim,
        c.intermediate_size,
    );
    let [wq, wk, wv] = match f.tensors.contains_key(&n("attn_qkv.weight")) {
        true => {
            let qkv = matrix(f, &n("attn_qkv.weight"), q + 2 * kv, d)?;
            [("q", 0, q), ("k", q, kv), ("v", q + kv, kv)].map(|(part, start, rows)| {
                qkv.row_range(&n(&format!("attn_qkv.weight[{part}]")), start, rows)
            })
        }
        false => [
            matrix(f, &n("attn_q.weight"), q, d)?,
            matrix(f, &n("attn_k.weight"), kv, d)?,
            matrix(f, &n("attn_v.weight"), kv, d)?,
        ],
    };
    let [q_bias, k_bias, v_bias] = match optional_vector(f, &n("attn_qkv.bias"), q + 2 * kv)? {
        Some(b) => [0..q, q..q + kv, q + kv..q + 2 * kv].map(|r| Some(b[r].to_vec())),
        None => [
            optional_vector(f, &n("attn_q.bias"), q)?,
            optional_vector(f, &n("attn_k.bias"), kv)?,
            optional_vector(f, &n("attn_v.bias"), kv)?,
        ],
    };
    let moe = crate::gguf_moe::moe_layer(f, moe, &c.architecture, i, d)?;
    let (post_attn_norm, post_ffn_norm) = match crate::gguf_gemma::is_gemma(&c.architecture) {
        true => crate::gguf_gemma::post_norms(f, i, d)?,
        false => (None, None),
    };
    // Without ffn_gate, ffn_up holds gate then up (llama.cpp's phi3 layout); an expert
    // layer's dense matrices are empty.
    let [w_gate, w_up, w_down] = match f.tensors.contains_key(&n("ffn_gate.weight")) {
        _ if moe.is_some() => [(0, d), (0, d), (0, ff)]
            .map(|(r, c)| RawTensor::from_f32(&n("ffn (experts)"), r, c, &[])),
        true => [
            matrix(f, &n("ffn_gate.weight"), ff, d)?,
            matrix(f, &n("ffn_up.weight"), ff, d)?,
            matrix(f, &n("ffn_down.weight"), d, ff)?,
        ],
        false => {
            let gate_up = matrix(f, &n("ffn_up.weight"), 2 * ff, d)?;
            let [gate, up] = [("gate", 0), ("up", ff)].map(|(part, start)| {
                gate_up.row_range(&n(&format!("ffn_up.weight[{part}]")), start, ff)
            });
            [gate, up, matrix(f, &n("ffn_down.weight"), d, ff)?]
        }
    };
    Ok(LayerWeights {
        attn_norm: vector(f, &n("attn_norm.weight"), d)?,
        wq,
        wk,
        wv,
        wo: matrix(f, &n("attn_output.weight"), d, q)?,
        q_bias,
        k_bias,
        v_bias,
        q_norm: optional_vector(f, &n("attn_q_norm.weight"), c.head_dim)?,
        k_norm: optional_vector(f, &n("attn_k_norm.weight"), c.head_dim)?,
        ffn_norm: vector(f, &n("ffn_norm.weight"), d)?,
        w_gate,
        w_up,
        w_down,
        moe,
        post_attn_norm,
        post_ffn_norm,
    })
}

/// All weights of the model, borrowing the file's memory map.
pub fn weights_from_gguf(f: &GgufFile) -> Result<ModelWeights> {
    let config = config_from_gguf(f)?;
    let moe = crate::gguf_moe::moe_spec(
        f,
        &config.architecture,
        config.num_layers,
        config.intermediate_size,
    )?;
    let layers = (0..config.num_layers)
        .map(|i| layer(f, &config, moe.as_ref(), i))
        .collect::<Result<Vec<_>>>()?;
    let lm_head = if config.tie_embeddings {
        None
    } else {
        Some(matrix(
            f,
            "output.weight",
            config.vocab_size,
            config.hidden_size,
        )?)
    };
    Ok(ModelWeights {
        embedding: matrix(
            f,
            "token_embd.weight",
            config.vocab_size,
            config.hidden_size,
        )?,
        final_norm: vector(f, "output_norm.weight", config.hidden_size)?,
        layers,
        lm_head,
        config,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) enum M {
        U32(u32),
        F32(f32),
        Str(&'static str),
        Bool(bool),
        Bools(Vec<bool>),
        U32s(Vec<u32>),
    }

    /// A GGUF v3 file of `meta` and f32 tensors whose values count up from 1, opened.
    fn gguf(name: &str, meta: &[(&str, M)], tensors: &[(&str, &[usize])]) -> GgufFile {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend((tensors.len() as u64).to_le_bytes());
        b.extend((meta.len() as u64).to_le_bytes());
        let string = |b: &mut Vec<u8>, s: &str| {
            b.extend((s.len() as u64).to_le_bytes());
            b.extend(s.as_bytes());
        };
        for (k, v) in meta {
            string(&mut b, k);
            match v {
                M::U32(x) => {
                    b.extend(4u32.to_le_bytes());
                    b.extend(x.to_le_bytes());
                }
                M::F32(x) => {
                    b.extend(6u32.to_le_bytes());
                    b.extend(x.to_le_bytes());
                }
                M::Str(s) => {
                    b.extend(8u32.to_le_bytes());
                    string(&mut b, s);
                }
                M::Bool(x) => {
                    b.extend(7u32.to_le_bytes());
                    b.push(*x as u8);
                }
                M::Bools(v) => {
                    b.extend(9u32.to_le_bytes());
                    b.extend(7u32.to_le_bytes());
                    b.extend((v.len() as u64).to_le_bytes());
                    b.extend(v.iter().map(|&x| x as u8));
                }
                M::U32s(v) => {
                    b.extend(9u32.to_le_bytes());
                    b.extend(4u32.to_le_bytes());
                    b.extend((v.len() as u64).to_le_bytes());
                    b.extend(v.iter().flat_map(|x| x.to_le_bytes()));
                }
            }
        }
        let mut offset = 0u64;
        for (t, dims) in tensors {
            string(&mut b, t);
            b.extend((dims.len() as u32).to_le_bytes());
            for d in dims.iter() {
                b.extend((*d as u64).to_le_bytes());
            }
            b.extend(0u32.to_le_bytes()); // F32
            b.extend(offset.to_le_bytes());
            offset += (dims.iter().product::<usize>() * 4).next_multiple_of(32) as u64;
        }
        while b.len() % 32 != 0 {
            b.push(0);
        }
        for (_, dims) in tensors {
            let n = dims.iter().product::<usize>();
            b.extend((1..=n).flat_map(|i| (i as f32).to_le_bytes()));
            while b.len() % 32 != 0 {
                b.push(0);
            }
        }
        let path =
            std::env::temp_dir().join(format!("kr-gguf-model-{}-{name}.gguf", std::process::id()));
        std::fs::write(&path, b).expect("write");
        let f = GgufFile::open(&path).expect("open");
        let _ = std::fs::remove_file(&path);
        f
    }

    /// Hidden 8, 2 heads of 4, 1 KV head, 2 layers, feed-forward 16, context 64.
    fn base(arch: &'static str) -> Vec<(String, M)> {
        [
            ("embedding_length", M::U32(8)),
            ("attention.head_count", M::U32(2)),
            ("attention.head_count_kv", M::U32(1)),
            ("block_count", M::U32(2)),
            ("feed_forward_length", M::U32(16)),
            ("context_length", M::U32(64)),
        ]
        .into_iter()
        .map(|(k, v)| (format!("{arch}.{k}"), v))
        .chain([("general.architecture".to_string(), M::Str(arch))])
        .collect()
    }

    /// A file of `arch` with the base keys, `extra` keys under `<arch>.`, the embedding and
    /// `tensors`.
    pub(crate) fn file(
        arch: &'static str,
        extra: Vec<(&str, M)>,
        tensors: &[(&str, &[usize])],
    ) -> GgufFile {
        let mut meta = base(arch);
        meta.extend(extra.into_iter().map(|(k, v)| (format!("{arch}.{k}"), v)));
        let meta: Vec<(&str, M)> = meta.iter().map(|(k, v)| (k.as_str(), clone(v))).collect();
        let mut all = vec![("token_embd.weight", &[8usize, 10][..])];
        all.extend_from_slice(tensors);
        // Tests run in parallel: every file gets a path of its own.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let id = format!(
            "{arch}-{}",
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        gguf(&id, &meta, &all)
    }

    fn config(
        arch: &'static str,
        extra: Vec<(&str, M)>,
        tensors: &[(&str, &[usize])],
    ) -> Result<ModelConfig> {
        config_from_gguf(&file(arch, extra, tensors))
    }

    fn clone(m: &M) -> M {
        match m {
            M::U32(x) => M::U32(*x),
            M::F32(x) => M::F32(*x),
            M::Str(s) => M::Str(s),
            M::Bool(b) => M::Bool(*b),
            M::Bools(v) => M::Bools(v.clone()),
            M::U32s(v) => M::U32s(v.clone()),
        }
    }

    #[test]
    fn phi3_window_zero_is_none_and_a_window_covers_every_layer_or_the_pattern() {
        let c = config("phi3", vec![("attention.sliding_window", M::U32(0))], &[]).unwrap();
        assert_eq!(
            (c.attention.sliding_window, c.rope_style),
            (None, RopeStyle::HalfSplit)
        );
        let c = config("phi3", vec![("attention.sliding_window", M::U32(7))], &[]).unwrap();
        assert_eq!(
            (c.window_of_layer(0), c.window_of_layer(1)),
            (Some(7), Some(7))
        );
        let c = config(
            "qwen3",
            vec![
                ("attention.sliding_window", M::U32(5)),
                (
                    "attention.sliding_window_pattern",
                    M::Bools(vec![false, true]),
                ),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(
            (c.window_of_layer(0), c.window_of_layer(1)),
            (None, Some(5))
        );
        // llama.cpp's period: layer i slides when i % n < n - 1.
        let c = config(
            "llama",
            vec![
                ("attention.sliding_window", M::U32(5)),
                ("attention.sliding_window_pattern", M::U32(2)),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(c.attention.sliding_layers, vec![true, false]);
    }

    #[test]
    fn yarn_keys_become_the_yarn_extension() {
        let yarn = || {
            vec![
                ("rope.scaling.type", M::Str("yarn")),
                ("rope.scaling.factor", M::F32(4.0)),
                ("rope.scaling.original_context_length", M::U32(16)),
            ]
        };
        let c = config("qwen2", yarn(), &[]).unwrap();
        assert_eq!(
            c.attention.rope,
            RopeExtension::Yarn {
                factor: 4.0,
                original_max_position_embeddings: 16,
                beta_fast: 32.0,
                beta_slow: 1.0,
                truncate: true
            }
        );
        assert_eq!(
            c.attention.rope_attention_factor,
            Some(yarn_attention_factor(4.0))
        );
        let mut given = yarn();
        given.push(("rope.scaling.yarn_attn_factor", M::F32(1.5)));
        given.push(("rope.scaling.yarn_beta_fast", M::F32(16.0)));
        let c = config("qwen2", given, &[]).unwrap();
        assert_eq!(c.attention.rope_attention_factor, Some(1.5));
        assert!(matches!(
            c.attention.rope,
            RopeExtension::Yarn {
                beta_fast: 16.0,
                ..
            }
        ));
        let mut mscale = yarn();
        mscale.push(("rope.scaling.yarn_log_multiplier", M::F32(0.1)));
        let e = config("qwen2", mscale, &[]).unwrap_err().to_string();
        assert!(e.contains("qwen2.rope.scaling.yarn_log_multiplier"), "{e}");
    }

    #[test]
    fn rope_factor_tensors_become_longrope_with_the_attention_factor() {
        let t: &[(&str, &[usize])] = &[
            ("rope_factors_long.weight", &[2]),
            ("rope_factors_short.weight", &[2]),
        ];
        let orig = || ("rope.scaling.original_context_length", M::U32(16));
        let c = config("phi3", vec![orig()], t).unwrap();
        assert_eq!(
            c.attention.rope,
            RopeExtension::LongRope {
                short_factor: vec![1.0, 2.0],
                long_factor: vec![1.0, 2.0],
                original_max_position_embeddings: 16
            }
        );
        let default = longrope_attention_factor(4.0, 16);
        assert_eq!(c.attention.rope_attention_factor, Some(default));
        let given = vec![orig(), ("rope.scaling.attn_factor", M::F32(1.25))];
        let c = config("phi3", given, t).unwrap();
        assert_eq!(c.attention.rope_attention_factor, Some(1.25));
        // A "longrope" type without the tensors names the missing one.
        let e = config(
            "qwen2",
            vec![("rope.scaling.type", M::Str("longrope"))],
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("rope_factors_short.weight"), "{e}");
    }

    #[test]
    fn fused_qkv_and_gate_up_split_into_their_rows() {
        // q 8 rows, k and v 4 each; gate then up, 16 rows each; 8 columns.
        let mut t: Vec<(String, Vec<usize>)> = vec![("output_norm.weight".into(), vec![8])];
        for i in 0..2 {
            for (name, dims) in [
                ("attn_norm.weight", vec![8]),
                ("attn_qkv.weight", vec![8, 16]),
                ("attn_output.weight", vec![8, 8]),
                ("ffn_norm.weight", vec![8]),
                ("ffn_up.weight", vec![8, 32]),
                ("ffn_down.weight", vec![16, 8]),
            ] {
                t.push((format!("blk.{i}.{name}"), dims));
            }
        }
        let t: Vec<(&str, &[usize])> = t.iter().map(|(n, d)| (n.as_str(), &d[..])).collect();
        let w = weights_from_gguf(&file("phi3", vec![], &t)).unwrap();
        let l = &w.layers[1];
        let first = |t: &RawTensor| (t.rows, t.cols, t.to_f32()[0]);
        assert_eq!(first(&l.wq), (8, 8, 1.0));
        assert_eq!(first(&l.wk), (4, 8, 65.0));
        assert_eq!(first(&l.wv), (4, 8, 97.0));
        assert_eq!(first(&l.w_gate), (16, 8, 1.0));
        assert_eq!(first(&l.w_up), (16, 8, 129.0));
        assert_eq!(l.w_up.name, "blk.1.ffn_up.weight[up]");
    }

    #[test]
    fn unsupported_scalings_and_partial_rotation_name_the_key() {
        let e = config(
            "llama",
            vec![
                ("rope.scaling.type", M::Str("linear")),
                ("rope.scaling.factor", M::F32(2.0)),
            ],
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("llama.rope.scaling.type"), "{e}");
        let c = config(
            "llama",
            vec![
                ("rope.scaling.type", M::Str("linear")),
                ("rope.scaling.factor", M::F32(1.0)),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(c.attention.rope, RopeExtension::None);
        let e = config("phi3", vec![("rope.dimension_count", M::U32(3))], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("phi3.rope.dimension_count") && e.contains("even"),
            "{e}"
        );
    }

    #[test]
    fn an_unsupported_architecture_is_named_with_the_supported_list() {
        let e = config("mamba", vec![], &[]).unwrap_err().to_string();
        assert!(e.contains("'mamba'") && e.contains(SUPPORTED), "{e}");
    }
}
