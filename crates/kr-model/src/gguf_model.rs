//! Builds a [`ModelConfig`] and [`ModelWeights`] from an open GGUF file (llama, qwen2,
//! qwen3 architectures), checking every tensor's presence and shape.

use crate::config::{ModelConfig, RopeStyle};
use crate::error::{ModelError, Result};
use crate::gguf::{GgufFile, TensorInfo};
use crate::weights::{LayerWeights, ModelWeights, RawTensor, TensorBytes};

const SUPPORTED: &str = "llama, qwen2, qwen3 (GGUF)";

/// Reads the architecture hyper-parameters from GGUF metadata.
pub fn config_from_gguf(f: &GgufFile) -> Result<ModelConfig> {
    let arch = f.get_str("general.architecture")?.to_string();
    let rope_style = match arch.as_str() {
        // The llama converter permutes Q/K for interleaved rotation; qwen files are not permuted.
        "llama" => RopeStyle::Interleaved,
        "qwen2" | "qwen3" => RopeStyle::HalfSplit,
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
    let embd = f.tensor("token_embd.weight")?;
    let vocab_size = f
        .get(&key("vocab_size"))
        .and_then(|v| v.as_u64())
        .map_or(embd.dims.get(1).copied().unwrap_or(0), |v| v as usize);
    Ok(ModelConfig {
        vocab_size,
        hidden_size: hidden,
        num_layers: f.get_u64(&key("block_count"))? as usize,
        num_heads,
        num_kv_heads,
        head_dim,
        intermediate_size: f.get_u64(&key("feed_forward_length"))? as usize,
        rope_theta: f
            .get(&key("rope.freq_base"))
            .and_then(|v| v.as_f64())
            .unwrap_or(10_000.0) as f32,
        rope_style,
        rope_scaling: None,
        rms_norm_eps: f
            .get(&key("attention.layer_norm_rms_epsilon"))
            .and_then(|v| v.as_f64())
            .unwrap_or(1e-5) as f32,
        max_context: f.get_u64(&key("context_length"))? as usize,
        tie_embeddings: !f.tensors.contains_key("output.weight"),
        attention: Default::default(),
        architecture: arch,
    })
}

fn matrix(f: &GgufFile, name: &str, rows: usize, cols: usize) -> Result<RawTensor> {
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

fn check_shape(f: &GgufFile, info: &TensorInfo, expected: &[usize]) -> Result<()> {
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

fn vector(f: &GgufFile, name: &str, len: usize) -> Result<Vec<f32>> {
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

fn layer(f: &GgufFile, c: &ModelConfig, i: usize) -> Result<LayerWeights> {
    let n = |s: &str| format!("blk.{i}.{s}");
    let (d, q, kv, ff) = (
        c.hidden_size,
        c.num_heads * c.head_dim,
        c.num_kv_heads * c.head_dim,
        c.intermediate_size,
    );
    Ok(LayerWeights {
        attn_norm: vector(f, &n("attn_norm.weight"), d)?,
        wq: matrix(f, &n("attn_q.weight"), q, d)?,
        wk: matrix(f, &n("attn_k.weight"), kv, d)?,
        wv: matrix(f, &n("attn_v.weight"), kv, d)?,
        wo: matrix(f, &n("attn_output.weight"), d, q)?,
        q_bias: optional_vector(f, &n("attn_q.bias"), q)?,
        k_bias: optional_vector(f, &n("attn_k.bias"), kv)?,
        v_bias: optional_vector(f, &n("attn_v.bias"), kv)?,
        q_norm: optional_vector(f, &n("attn_q_norm.weight"), c.head_dim)?,
        k_norm: optional_vector(f, &n("attn_k_norm.weight"), c.head_dim)?,
        ffn_norm: vector(f, &n("ffn_norm.weight"), d)?,
        w_gate: matrix(f, &n("ffn_gate.weight"), ff, d)?,
        w_up: matrix(f, &n("ffn_up.weight"), ff, d)?,
        w_down: matrix(f, &n("ffn_down.weight"), d, ff)?,
    })
}

/// All weights of the model, borrowing the file's memory map.
pub fn weights_from_gguf(f: &GgufFile) -> Result<ModelWeights> {
    let config = config_from_gguf(f)?;
    let layers = (0..config.num_layers)
        .map(|i| layer(f, &config, i))
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
