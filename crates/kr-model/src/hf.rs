//! Hugging Face model directories: `config.json` (Llama, Qwen2, Qwen3, Mistral), safetensors
//! weights under their Hugging Face names, `tokenizer.json`, and the chat template and special
//! tokens from `tokenizer_config.json`, `chat_template.jinja` and `generation_config.json`.
//!
//! Hugging Face checkpoints keep Q/K rows unpermuted, so RoPE is always half-split here.

use crate::chat::ChatTemplate;
use crate::config::{Llama3RopeScaling, ModelConfig, RopeStyle};
use crate::error::{ModelError, Result};
use crate::safetensors::SafetensorsSet;
use crate::tokenizer::Tokenizer;
use crate::weights::{LayerWeights, ModelWeights};
use serde_json::Value;
use std::path::{Path, PathBuf};

const SUPPORTED: &str = "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, \
                         Qwen3ForCausalLM (Hugging Face directories)";

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

/// `rope_scaling` (transformers 4) or `rope_parameters` (transformers 5) of type llama3.
fn rope_scaling(cfg: &Value, path: &Path) -> Result<Option<Llama3RopeScaling>> {
    let Some(rs) = [&cfg["rope_scaling"], &cfg["rope_parameters"]]
        .into_iter()
        .find(|v| v.is_object())
    else {
        return Ok(None);
    };
    let kind = rs["rope_type"].as_str().or(rs["type"].as_str());
    match kind {
        None | Some("default") => Ok(None),
        Some("llama3") => {
            let f = |k: &str| {
                rs[k].as_f64().map(|v| v as f32).ok_or_else(|| {
                    field_err(path, &format!("rope_scaling.{k}"), "a number (llama3 rope)")
                })
            };
            Ok(Some(Llama3RopeScaling {
                factor: f("factor")?,
                low_freq_factor: f("low_freq_factor")?,
                high_freq_factor: f("high_freq_factor")?,
                original_max_position_embeddings: f("original_max_position_embeddings")? as usize,
            }))
        }
        Some(_) => Err(field_err(
            path,
            "rope_scaling.rope_type",
            "\"default\" or \"llama3\"",
        )),
    }
}

/// The decoder configuration from `config.json`.
pub fn config_from_json(cfg: &Value, path: &Path) -> Result<ModelConfig> {
    let arch = cfg["architectures"][0]
        .as_str()
        .ok_or_else(|| field_err(path, "architectures", "a list of class names"))?;
    let family = match arch {
        "LlamaForCausalLM" => "llama",
        "MistralForCausalLM" => "mistral",
        "Qwen2ForCausalLM" => "qwen2",
        "Qwen3ForCausalLM" => "qwen3",
        _ => {
            return Err(ModelError::Architecture {
                path: path.to_path_buf(),
                arch: arch.to_string(),
                supported: SUPPORTED,
            })
        }
    };
    let hidden = usize_field(cfg, path, "hidden_size")?;
    let num_heads = usize_field(cfg, path, "num_attention_heads")?;
    let rope_theta = cfg["rope_theta"]
        .as_f64()
        .or(cfg["rope_parameters"]["rope_theta"].as_f64())
        .unwrap_or(10_000.0);
    Ok(ModelConfig {
        architecture: family.to_string(),
        vocab_size: usize_field(cfg, path, "vocab_size")?,
        hidden_size: hidden,
        num_layers: usize_field(cfg, path, "num_hidden_layers")?,
        num_heads,
        num_kv_heads: cfg["num_key_value_heads"]
            .as_u64()
            .map_or(num_heads, |v| v as usize),
        head_dim: cfg["head_dim"]
            .as_u64()
            .map_or(hidden / num_heads.max(1), |v| v as usize),
        intermediate_size: usize_field(cfg, path, "intermediate_size")?,
        rope_theta: rope_theta as f32,
        rope_style: RopeStyle::HalfSplit,
        rope_scaling: rope_scaling(cfg, path)?,
        rms_norm_eps: cfg["rms_norm_eps"].as_f64().unwrap_or(1e-6) as f32,
        max_context: cfg["max_position_embeddings"].as_u64().unwrap_or(4096) as usize,
        tie_embeddings: cfg["tie_word_embeddings"].as_bool().unwrap_or(false),
    })
}

fn layer(st: &SafetensorsSet, c: &ModelConfig, i: usize) -> Result<LayerWeights> {
    let n = |s: &str| format!("model.layers.{i}.{s}");
    let (d, q, kv, ff, hd) = (
        c.hidden_size,
        c.num_heads * c.head_dim,
        c.num_kv_heads * c.head_dim,
        c.intermediate_size,
        c.head_dim,
    );
    Ok(LayerWeights {
        attn_norm: st.vector(&n("input_layernorm.weight"), d)?,
        wq: st.matrix(&n("self_attn.q_proj.weight"), q, d)?,
        wk: st.matrix(&n("self_attn.k_proj.weight"), kv, d)?,
        wv: st.matrix(&n("self_attn.v_proj.weight"), kv, d)?,
        wo: st.matrix(&n("self_attn.o_proj.weight"), d, q)?,
        q_bias: st.optional_vector(&n("self_attn.q_proj.bias"), q)?,
        k_bias: st.optional_vector(&n("self_attn.k_proj.bias"), kv)?,
        v_bias: st.optional_vector(&n("self_attn.v_proj.bias"), kv)?,
        q_norm: st.optional_vector(&n("self_attn.q_norm.weight"), hd)?,
        k_norm: st.optional_vector(&n("self_attn.k_norm.weight"), hd)?,
        ffn_norm: st.vector(&n("post_attention_layernorm.weight"), d)?,
        w_gate: st.matrix(&n("mlp.gate_proj.weight"), ff, d)?,
        w_up: st.matrix(&n("mlp.up_proj.weight"), ff, d)?,
        w_down: st.matrix(&n("mlp.down_proj.weight"), d, ff)?,
    })
}

/// The weights of the directory, borrowing the memory-mapped safetensors files.
pub fn weights_from_dir(dir: &Path, config: ModelConfig) -> Result<ModelWeights> {
    let st = SafetensorsSet::open_dir(dir)?;
    let layers = (0..config.num_layers)
        .map(|i| layer(&st, &config, i))
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
    Ok(ModelWeights {
        embedding: st.matrix("model.embed_tokens.weight", v, d)?,
        final_norm: st.vector("model.norm.weight", d)?,
        layers,
        lm_head,
        config,
    })
}

/// Loads config, weights, tokenizer and chat template of a Hugging Face directory.
pub fn load_hf_dir(dir: &Path) -> Result<HfModel> {
    let cfg_path = dir.join("config.json");
    let cfg = read_json(&cfg_path)?.ok_or_else(|| missing(&cfg_path))?;
    let config = config_from_json(&cfg, &cfg_path)?;
    check_quantization(&cfg, &cfg_path)?;
    let weights = weights_from_dir(dir, config)?;
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
    fn unsupported_rope_type_names_the_field() {
        let mut c = base();
        c["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0});
        let e = config_from_json(&c, Path::new("config.json")).unwrap_err();
        assert!(e.to_string().contains("rope_scaling.rope_type"), "{e}");
    }
}
