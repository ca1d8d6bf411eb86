//! Hugging Face model directories: `config.json` (Llama, Qwen2, Qwen3, Mistral, Phi-3), safetensors
//! weights under their Hugging Face names, `tokenizer.json`, and the chat template and special
//! tokens from `tokenizer_config.json`, `chat_template.jinja` and `generation_config.json`.
//!
//! Hugging Face checkpoints keep Q/K rows unpermuted, so RoPE is always half-split here.

use crate::chat::ChatTemplate;
use crate::config::{AttentionExt, Llama3RopeScaling, ModelConfig, RopeExtension, RopeStyle};
use crate::error::{ModelError, Result};
use crate::hf_moe::MoeSpec;
use crate::safetensors::SafetensorsSet;
use crate::tokenizer::Tokenizer;
use crate::weights::{LayerWeights, ModelWeights, RawTensor};
use serde_json::Value;
use std::path::{Path, PathBuf};

const SUPPORTED: &str = "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, \
                         Qwen3ForCausalLM, Phi3ForCausalLM, Qwen3MoeForCausalLM, \
                         MixtralForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM, \
                         Gemma3ForConditionalGeneration (text) (Hugging Face directories)";

/// A loaded Hugging Face directory.
pub struct HfModel {
    pub weights: ModelWeights,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<ChatTemplate>,
}

/// True when `dir` looks like a Hugging Face model directory.
pub fn is_hf_dir(dir: &Path) -> bool {
    dir.is_dir() && dir.join("config.json").is_file()
}

/// Reads a JSON file; `Ok(None)` when it does not exist.
fn read_json(path: &Path) -> Result<Option<Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ModelError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| ModelError::Truncated {
            path: path.to_path_buf(),
            what: format!("invalid JSON: {e}"),
        })
}

fn field_err(path: &Path, key: &str, expected: &'static str) -> ModelError {
    ModelError::Metadata {
        path: path.to_path_buf(),
        key: key.to_string(),
        expected,
    }
}

fn usize_field(cfg: &Value, path: &Path, key: &str) -> Result<usize> {
    cfg[key]
        .as_u64()
        .map(|v| v as usize)
        .ok_or_else(|| field_err(path, key, "a non-negative integer"))
}

/// `rope_scaling` (transformers 4) or `rope_parameters` (transformers 5), when it scales.
fn rope_params(cfg: &Value) -> Option<&Value> {
    [&cfg["rope_scaling"], &cfg["rope_parameters"]]
        .into_iter()
        .find(|v| v.is_object())
}

/// The rope scaling of type llama3, if that is the type.
fn rope_scaling(cfg: &Value, path: &Path) -> Result<Option<Llama3RopeScaling>> {
    let Some(rs) = rope_params(cfg) else {
        return Ok(None);
    };
    if rope_type(rs) != Some("llama3") {
        return Ok(None);
    }
    let f = |k: &str| number(rs, path, k, "a number (llama3 rope)");
    Ok(Some(Llama3RopeScaling {
        factor: f("factor")?,
        low_freq_factor: f("low_freq_factor")?,
        high_freq_factor: f("high_freq_factor")?,
        original_max_position_embeddings: f("original_max_position_embeddings")? as usize,
    }))
}

fn rope_type(rs: &Value) -> Option<&str> {
    rs["rope_type"].as_str().or(rs["type"].as_str())
}

fn number(rs: &Value, path: &Path, key: &str, expected: &'static str) -> Result<f32> {
    rs[key]
        .as_f64()
        .map(|v| v as f32)
        .ok_or_else(|| field_err(path, &format!("rope_scaling.{key}"), expected))
}

/// YaRN and LongRoPE scalings and their attention factor; other types are refused by name.
fn rope_extension(
    cfg: &Value,
    path: &Path,
    max_context: usize,
) -> Result<(RopeExtension, Option<f32>)> {
    let Some(rs) = rope_params(cfg) else {
        return Ok((RopeExtension::None, None));
    };
    let orig = || {
        rs["original_max_position_embeddings"]
            .as_u64()
            .or(cfg["original_max_position_embeddings"].as_u64())
            .map(|v| v as usize)
            .ok_or_else(|| {
                field_err(
                    path,
                    "rope_scaling.original_max_position_embeddings",
                    "an integer",
                )
            })
    };
    let given = rs["attention_factor"].as_f64().map(|v| v as f32);
    match rope_type(rs) {
        None | Some("default") | Some("llama3") => Ok((RopeExtension::None, None)),
        Some("linear") => match rs["factor"].as_f64() {
            Some(f) if f > 0.0 => Ok((RopeExtension::Linear(f as f32), None)),
            _ => Err(field_err(
                path,
                "rope_scaling.factor",
                "a positive number (linear rope)",
            )),
        },
        Some("yarn") => yarn(rs, path, orig()?, max_context, given),
        Some("longrope") | Some("su") => longrope(rs, path, orig()?, max_context, given),
        Some(_) => Err(field_err(
            path,
            "rope_scaling.rope_type",
            "\"default\", \"linear\", \"llama3\", \"yarn\" or \"longrope\"",
        )),
    }
}

/// YaRN's parameters and attention factor (`mscale` variants are refused by name).
fn yarn(
    rs: &Value,
    path: &Path,
    orig: usize,
    max_context: usize,
    given: Option<f32>,
) -> Result<(RopeExtension, Option<f32>)> {
    let factor = match rs["factor"].as_f64() {
        Some(f) => f as f32,
        None => max_context as f32 / orig as f32,
    };
    if rs["mscale"].is_number() || rs["mscale_all_dim"].is_number() {
        return Err(field_err(
            path,
            "rope_scaling.mscale",
            "absent (YaRN with mscale / mscale_all_dim is not supported)",
        ));
    }
    let ext = RopeExtension::Yarn {
        factor,
        original_max_position_embeddings: orig,
        beta_fast: rs["beta_fast"].as_f64().unwrap_or(32.0) as f32,
        beta_slow: rs["beta_slow"].as_f64().unwrap_or(1.0) as f32,
        truncate: rs["truncate"].as_bool().unwrap_or(true),
    };
    let af = given.unwrap_or_else(|| crate::config::yarn_attention_factor(factor));
    Ok((ext, Some(af)))
}

/// LongRoPE's factor lists and attention factor (`rope_type` `longrope` or `su`).
fn longrope(
    rs: &Value,
    path: &Path,
    orig: usize,
    max_context: usize,
    given: Option<f32>,
) -> Result<(RopeExtension, Option<f32>)> {
    let factors = |key: &str| -> Result<Vec<f32>> {
        rs[key]
            .as_array()
            .and_then(|a| a.iter().map(|v| v.as_f64().map(|f| f as f32)).collect())
            .ok_or_else(|| field_err(path, &format!("rope_scaling.{key}"), "a list of numbers"))
    };
    let factor = rs["factor"]
        .as_f64()
        .map_or(max_context as f32 / orig as f32, |f| f as f32);
    let ext = RopeExtension::LongRope {
        short_factor: factors("short_factor")?,
        long_factor: factors("long_factor")?,
        original_max_position_embeddings: orig,
    };
    let af = given.unwrap_or_else(|| crate::config::longrope_attention_factor(factor, orig));
    Ok((ext, Some(af)))
}

/// LongRoPE's factor lists: one positive factor per rotated dimension pair.
fn check_rope_factors(rope: &RopeExtension, pairs: usize, path: &Path) -> Result<()> {
    if let RopeExtension::LongRope {
        short_factor,
        long_factor,
        ..
    } = rope
    {
        for (key, list) in [("short_factor", short_factor), ("long_factor", long_factor)] {
            if list.len() != pairs || list.iter().any(|&f| !(f > 0.0 && f.is_finite())) {
                return Err(field_err(
                    path,
                    &format!("rope_scaling.{key}"),
                    "one positive factor per rotated dimension pair (head_dim × partial_rotary_factor / 2)",
                ));
            }
        }
    }
    Ok(())
}

/// The sliding window and the layers it applies to: transformers 5's `layer_types`, else
/// `sliding_window` on every layer (Mistral, Phi-3), unless `use_sliding_window` is false
/// (Qwen2/3, where `max_window_layers` then sets the first sliding layer).
fn sliding_window(cfg: &Value, path: &Path, layers: usize) -> Result<(Option<usize>, Vec<bool>)> {
    let window = match cfg["sliding_window"].as_u64() {
        Some(w) if cfg["use_sliding_window"].as_bool() != Some(false) => w as usize,
        _ => return Ok((None, Vec::new())),
    };
    let sliding: Vec<bool> = match cfg["layer_types"].as_array() {
        Some(types) => types
            .iter()
            .map(|t| t.as_str() == Some("sliding_attention"))
            .collect(),
        None => match cfg["max_window_layers"].as_u64() {
            Some(first) if cfg.get("use_sliding_window").is_some() => {
                (0..layers).map(|i| i as u64 >= first).collect()
            }
            _ => Vec::new(),
        },
    };
    if !sliding.is_empty() && sliding.len() != layers {
        return Err(field_err(path, "layer_types", "one entry per layer"));
    }
    if layers > 128 && (sliding.is_empty() || sliding.iter().any(|&s| s)) {
        return Err(field_err(
            path,
            "sliding_window",
            "absent on models of more than 128 layers",
        ));
    }
    Ok((Some(window), sliding))
}

/// kr-serve's family name of a Hugging Face architecture class.
fn family_of(arch: &str, path: &Path) -> Result<&'static str> {
    Ok(match arch {
        "LlamaForCausalLM" => "llama",
        "MistralForCausalLM" => "mistral",
        "Qwen2ForCausalLM" => "qwen2",
        "Qwen3ForCausalLM" => "qwen3",
        "Phi3ForCausalLM" => "phi3",
        "Qwen3MoeForCausalLM" => "qwen3moe",
        "MixtralForCausalLM" => "mixtral",
        "Gemma2ForCausalLM" => "gemma2",
        "Gemma3ForCausalLM" => "gemma3",
        _ => {
            return Err(ModelError::Architecture {
                path: path.to_path_buf(),
                arch: arch.to_string(),
                supported: SUPPORTED,
            })
        }
    })
}

/// How many dimensions of each head rotate (`partial_rotary_factor`, at the top level or in
/// `rope_parameters`): an even number, at least 2.
fn rotary_dim(cfg: &Value, path: &Path, head_dim: usize) -> Result<usize> {
    let partial = cfg["partial_rotary_factor"]
        .as_f64()
        .or(cfg["rope_parameters"]["partial_rotary_factor"].as_f64())
        .unwrap_or(1.0);
    let rotary_dim = (head_dim as f64 * partial) as usize;
    if !(partial > 0.0 && partial <= 1.0) || rotary_dim == 0 || rotary_dim % 2 != 0 {
        return Err(field_err(
            path,
            "partial_rotary_factor",
            "in (0, 1], rotating an even number of dimensions of each head",
        ));
    }
    Ok(rotary_dim)
}

/// The decoder configuration from `config.json`.
pub fn config_from_json(cfg: &Value, path: &Path) -> Result<ModelConfig> {
    let cfg = &crate::hf_gemma::normalize(cfg);
    let arch = cfg["architectures"][0]
        .as_str()
        .ok_or_else(|| field_err(path, "architectures", "a list of class names"))?;
    let family = family_of(arch, path)?;
    let hidden = usize_field(cfg, path, "hidden_size")?;
    let num_heads = usize_field(cfg, path, "num_attention_heads")?;
    let rope_theta = cfg["rope_theta"]
        .as_f64()
        .or(cfg["rope_parameters"]["rope_theta"].as_f64())
        .unwrap_or(10_000.0);
    let head_dim = cfg["head_dim"]
        .as_u64()
        .map_or(hidden / num_heads.max(1), |v| v as usize);
    let rotary_dim = rotary_dim(cfg, path, head_dim)?;
    let num_layers = usize_field(cfg, path, "num_hidden_layers")?;
    let mut max_context = cfg["max_position_embeddings"].as_u64().unwrap_or(4096) as usize;
    let (rope, rope_attention_factor) = rope_extension(cfg, path, max_context)?;
    check_rope_factors(&rope, rotary_dim / 2, path)?;
    if let RopeExtension::Yarn {
        factor,
        original_max_position_embeddings: orig,
        ..
    } = &rope
    {
        // Qwen's recipe adds YaRN to a config whose max_position_embeddings stays the original.
        max_context = max_context.max((*factor as f64 * *orig as f64) as usize);
    }
    let (sliding_window, mut sliding_layers) = sliding_window(cfg, path, num_layers)?;
    let gemma = crate::hf_gemma::is_gemma(family);
    let mut attention = AttentionExt::default();
    if gemma {
        let pattern;
        (attention, pattern) = crate::hf_gemma::features(cfg, family, hidden, num_layers);
        if cfg["layer_types"].is_null() {
            sliding_layers = pattern;
        }
    }
    Ok(ModelConfig {
        architecture: family.to_string(),
        vocab_size: usize_field(cfg, path, "vocab_size")?,
        hidden_size: hidden,
        num_layers,
        num_heads,
        num_kv_heads: cfg["num_key_value_heads"]
            .as_u64()
            .map_or(num_heads, |v| v as usize),
        head_dim,
        intermediate_size: usize_field(cfg, path, "intermediate_size")?,
        rope_theta: rope_theta as f32,
        rope_style: RopeStyle::HalfSplit,
        rope_scaling: rope_scaling(cfg, path)?,
        rms_norm_eps: cfg["rms_norm_eps"].as_f64().unwrap_or(1e-6) as f32,
        max_context,
        tie_embeddings: cfg["tie_word_embeddings"].as_bool().unwrap_or(gemma),
        attention: AttentionExt {
            rope,
            rope_attention_factor,
            sliding_window,
            sliding_layers,
            rotary_dim: (rotary_dim != head_dim).then_some(rotary_dim),
            ..attention
        },
    })
}

fn layer(
    st: &SafetensorsSet,
    c: &ModelConfig,
    (prefix, i): (&str, usize),
    moe: Option<&MoeSpec>,
) -> Result<LayerWeights> {
    let n = |s: &str| format!("{prefix}.layers.{i}.{s}");
    let (d, q, kv, ff, hd) = (
        c.hidden_size,
        c.num_heads * c.head_dim,
        c.num_kv_heads * c.head_dim,
        c.intermediate_size,
        c.head_dim,
    );
    let attn_norm = st.vector(&n("input_layernorm.weight"), d)?;
    // Gemma norms each block's output too: its `post_attention_layernorm` is the attention
    // output's norm, and the feed-forward reads `pre_feedforward_layernorm`.
    let post_norms = st.contains(&n("pre_feedforward_layernorm.weight"));
    let ffn_norm_name = match post_norms {
        true => "pre_feedforward_layernorm.weight",
        false => "post_attention_layernorm.weight",
    };
    let post_norm = |name: &str| -> Result<Option<Vec<f32>>> {
        match post_norms {
            true => st.vector(&n(name), d).map(Some),
            false => Ok(None),
        }
    };
    let [wq, wk, wv] = qkv_projections(st, &n, (q, kv), d)?;
    let moe = match moe {
        Some(spec) => crate::hf_moe::moe_layer(st, spec, i, d)?,
        None => None,
    };
    let [w_gate, w_up, w_down] = match moe {
        Some(_) => [(0, d), (0, d), (0, ff)]
            .map(|(r, c)| RawTensor::from_f32(&n("mlp (experts)"), r, c, &[])),
        None => dense_ffn(st, &n, ff, d)?,
    };
    Ok(LayerWeights {
        attn_norm,
        wq,
        wk,
        wv,
        wo: st.matrix(&n("self_attn.o_proj.weight"), d, q)?,
        q_bias: st.optional_vector(&n("self_attn.q_proj.bias"), q)?,
        k_bias: st.optional_vector(&n("self_attn.k_proj.bias"), kv)?,
        v_bias: st.optional_vector(&n("self_attn.v_proj.bias"), kv)?,
        q_norm: st.optional_vector(&n("self_attn.q_norm.weight"), hd)?,
        k_norm: st.optional_vector(&n("self_attn.k_norm.weight"), hd)?,
        ffn_norm: st.vector(&n(ffn_norm_name), d)?,
        w_gate,
        w_up,
        w_down,
        moe,
        post_attn_norm: post_norm("post_attention_layernorm.weight")?,
        post_ffn_norm: post_norm("post_feedforward_layernorm.weight")?,
    })
}

/// A layer's q, k and v projections (fused as `qkv_proj` in Phi-3: q rows, then k, then v).
fn qkv_projections(
    st: &SafetensorsSet,
    n: &dyn Fn(&str) -> String,
    (q, kv): (usize, usize),
    d: usize,
) -> Result<[RawTensor; 3]> {
    if !st.contains(&n("self_attn.qkv_proj.weight")) {
        return Ok([
            st.matrix(&n("self_attn.q_proj.weight"), q, d)?,
            st.matrix(&n("self_attn.k_proj.weight"), kv, d)?,
            st.matrix(&n("self_attn.v_proj.weight"), kv, d)?,
        ]);
    }
    let qkv = st.matrix(&n("self_attn.qkv_proj.weight"), q + 2 * kv, d)?;
    Ok(
        [("q_proj", 0, q), ("k_proj", q, kv), ("v_proj", q + kv, kv)].map(|(part, start, rows)| {
            qkv.row_range(
                &n(&format!("self_attn.qkv_proj.weight[{part}]")),
                start,
                rows,
            )
        }),
    )
}

/// A dense layer's gate, up and down projections (gate and up fused in Phi-3).
fn dense_ffn(
    st: &SafetensorsSet,
    n: &dyn Fn(&str) -> String,
    ff: usize,
    d: usize,
) -> Result<[RawTensor; 3]> {
    let [gate, up] = match st.contains(&n("mlp.gate_up_proj.weight")) {
        true => {
            let gate_up = st.matrix(&n("mlp.gate_up_proj.weight"), 2 * ff, d)?;
            [("gate", 0), ("up", ff)].map(|(part, start)| {
                gate_up.row_range(&n(&format!("mlp.gate_up_proj.weight[{part}]")), start, ff)
            })
        }
        false => [
            st.matrix(&n("mlp.gate_proj.weight"), ff, d)?,
            st.matrix(&n("mlp.up_proj.weight"), ff, d)?,
        ],
    };
    Ok([gate, up, st.matrix(&n("mlp.down_proj.weight"), d, ff)?])
}

/// The weights of the directory, borrowing the memory-mapped safetensors files; `moe`: the
/// experts of a Mixture-of-Experts model.
pub fn weights_from_dir(
    dir: &Path,
    config: ModelConfig,
    moe: Option<&MoeSpec>,
) -> Result<ModelWeights> {
    let st = SafetensorsSet::open_dir(dir)?;
    // Multimodal checkpoints keep the language model under a prefix of their own.
    let prefix = ["model.language_model", "language_model.model"]
        .into_iter()
        .find(|p| st.contains(&format!("{p}.embed_tokens.weight")))
        .unwrap_or("model");
    let layers = (0..config.num_layers)
        .map(|i| layer(&st, &config, (prefix, i), moe))
        .collect::<Result<Vec<_>>>()?;
    let (v, d) = (config.vocab_size, config.hidden_size);
    // Some tied checkpoints still store lm_head.weight; use it when present.
    let lm_head = if st.contains("lm_head.weight") {
        Some(st.matrix("lm_head.weight", v, d)?)
    } else if config.tie_embeddings {
        None
    } else {
        return Err(ModelError::MissingTensor {
            path: dir.join("model.safetensors"),
            tensor: "lm_head.weight (tie_word_embeddings is false)".into(),
        });
    };
    let gemma = crate::hf_gemma::is_gemma(&config.architecture);
    let mut weights = ModelWeights {
        embedding: st.matrix(&format!("{prefix}.embed_tokens.weight"), v, d)?,
        final_norm: st.vector(&format!("{prefix}.norm.weight"), d)?,
        layers,
        lm_head,
        config,
    };
    if gemma {
        crate::hf_gemma::shift_norm_gains(&mut weights);
    }
    Ok(weights)
}

/// Loads config, weights, tokenizer and chat template of a Hugging Face directory.
pub fn load_hf_dir(dir: &Path) -> Result<HfModel> {
    let cfg_path = dir.join("config.json");
    let cfg = read_json(&cfg_path)?.ok_or_else(|| missing(&cfg_path))?;
    let config = config_from_json(&cfg, &cfg_path)?;
    check_quantization(&cfg, &cfg_path)?;
    let moe = crate::hf_moe::moe_spec(&cfg, &cfg_path, &config.architecture, config.num_layers)?;
    let weights = weights_from_dir(dir, config, moe.as_ref())?;
    let tok_cfg = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
    let gen_cfg = read_json(&dir.join("generation_config.json"))?.unwrap_or(Value::Null);
    let tokenizer = crate::hf_tokenizer::tokenizer_from_dir(dir, &tok_cfg, &gen_cfg, &cfg)?;
    let chat_template = crate::hf_tokenizer::chat_template_from_dir(dir, &tok_cfg)?;
    Ok(HfModel {
        weights,
        tokenizer,
        chat_template,
    })
}

/// MLX checkpoints name their quantisation in `quantization` (and `quantization_config`);
/// kr-serve reads the affine mode (the default) and rejects others by name.
fn check_quantization(cfg: &Value, path: &Path) -> Result<()> {
    for key in ["quantization", "quantization_config"] {
        let q = &cfg[key];
        if q.is_null() {
            continue;
        }
        if let Some(method) = q["quant_method"].as_str() {
            return Err(ModelError::Metadata {
                path: path.to_path_buf(),
                key: format!("{key}.quant_method = \"{method}\""),
                expected: "an MLX affine checkpoint (`mlx_lm.convert -q`) or unquantised weights",
            });
        }
        match q["mode"].as_str() {
            None | Some("affine") => {}
            Some(mode) => {
                return Err(ModelError::Metadata {
                    path: path.to_path_buf(),
                    key: format!("{key}.mode = \"{mode}\""),
                    expected: "\"affine\" (MLX's 4- and 8-bit groups)",
                })
            }
        }
    }
    Ok(())
}

pub(crate) fn missing(path: &Path) -> ModelError {
    ModelError::Io {
        path: PathBuf::from(path),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "required file is missing"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
               "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
               "intermediate_size": 128, "vocab_size": 512})
    }

    #[test]
    fn transformers4_rope_scaling_and_top_level_theta() {
        let mut c = base();
        c["rope_theta"] = json!(500000.0);
        c["rope_scaling"] = json!({"rope_type": "llama3", "factor": 32.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192});
        let cfg = config_from_json(&c, Path::new("config.json")).unwrap();
        assert_eq!(cfg.rope_theta, 500000.0);
        assert_eq!(cfg.rope_scaling.unwrap().factor, 32.0);
        assert_eq!((cfg.head_dim, cfg.rope_style), (16, RopeStyle::HalfSplit));
    }

    #[test]
    fn multimodal_gemma3_text_config_takes_transformers_defaults() {
        // Like released Gemma 3 4B configs: the text config names only what differs.
        let c = json!({"architectures": ["Gemma3ForConditionalGeneration"],
            "text_config": {"hidden_size": 2560, "intermediate_size": 10240,
                "num_hidden_layers": 34, "rope_scaling": {"rope_type": "linear", "factor": 8.0}}});
        let cfg = config_from_json(&c, Path::new("config.json")).unwrap();
        assert_eq!(
            (cfg.architecture.as_str(), cfg.vocab_size, cfg.head_dim),
            ("gemma3", 262_208, 256)
        );
        assert_eq!(
            (cfg.num_heads, cfg.num_kv_heads, cfg.rope_theta),
            (8, 4, 1_000_000.0)
        );
        let a = &cfg.attention;
        assert_eq!(
            (a.query_scale, a.local_rope_theta, a.sliding_window),
            (Some(256.0), Some(10_000.0), Some(4096))
        );
        assert_eq!(a.rope, RopeExtension::Linear(8.0));
        assert!(cfg.tie_embeddings);
        assert_eq!(cfg.window_of_layer(5), None, "every sixth layer is global");
    }

    #[test]
    fn unsupported_rope_type_names_the_field() {
        let mut c = base();
        c["rope_scaling"] = json!({"rope_type": "dynamic", "factor": 4.0});
        let e = config_from_json(&c, Path::new("config.json")).unwrap_err();
        assert!(e.to_string().contains("rope_scaling.rope_type"), "{e}");
    }
}
