//! Mixture-of-Experts blocks of Hugging Face checkpoints: Qwen3-MoE (`mlp.gate`,
//! `mlp.experts.E.{gate,up,down}_proj`) and Mixtral (`block_sparse_moe.gate`,
//! `block_sparse_moe.experts.E.{w1,w3,w2}`), with both config styles (`num_experts` and
//! transformers 5's `num_local_experts`).
//!
//! Invariant: a layer is sparse exactly as transformers decides it (Qwen: not in
//! `mlp_only_layers` and `(layer + 1) % decoder_sparse_step == 0`; Mixtral: every layer).

use crate::error::{ModelError, Result};
use crate::safetensors::SafetensorsSet;
use crate::weights::{ExpertWeights, MoeWeights};
use serde_json::Value;
use std::path::Path;

/// The expert layout a config asks for.
#[derive(Debug, Clone)]
pub struct MoeSpec {
    pub experts: usize,
    pub top_k: usize,
    /// Rows of each expert's gate and up projections.
    pub expert_ff: usize,
    pub norm_topk_prob: bool,
    /// Which layers hold experts.
    pub sparse: Vec<bool>,
    /// `mixtral` or `qwen3moe`: the tensor names.
    pub family: &'static str,
}

fn bad(path: &Path, key: &str, expected: &'static str) -> ModelError {
    ModelError::Metadata {
        path: path.to_path_buf(),
        key: key.to_string(),
        expected,
    }
}

/// The experts of `family`'s config (`None` for a dense family).
pub fn moe_spec(cfg: &Value, path: &Path, family: &str, layers: usize) -> Result<Option<MoeSpec>> {
    let (family, ff_key): (&'static str, &str) = match family {
        "qwen3moe" => ("qwen3moe", "moe_intermediate_size"),
        "mixtral" => ("mixtral", "intermediate_size"),
        _ => return Ok(None),
    };
    let count = |k: &str| cfg[k].as_u64().map(|v| v as usize);
    let experts = count("num_experts")
        .or(count("num_local_experts"))
        .filter(|&e| e > 0)
        .ok_or_else(|| bad(path, "num_experts", "a positive integer"))?;
    let top_k = count("num_experts_per_tok")
        .filter(|&k| (1..=experts).contains(&k))
        .ok_or_else(|| bad(path, "num_experts_per_tok", "1..=num_experts"))?;
    let expert_ff = count(ff_key).ok_or_else(|| bad(path, ff_key, "a positive integer"))?;
    let step = count("decoder_sparse_step").unwrap_or(1).max(1);
    let dense: Vec<u64> = cfg["mlp_only_layers"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let sparse = (0..layers)
        .map(|i| !dense.contains(&(i as u64)) && (i + 1) % step == 0)
        .collect();
    Ok(Some(MoeSpec {
        experts,
        top_k,
        expert_ff,
        // Mixtral always renormalises the chosen probabilities.
        norm_topk_prob: family == "mixtral" || cfg["norm_topk_prob"].as_bool().unwrap_or(false),
        sparse,
        family,
    }))
}

/// Layer `i`'s router and experts, if the layer is sparse.
pub fn moe_layer(
    st: &SafetensorsSet,
    spec: &MoeSpec,
    i: usize,
    d: usize,
) -> Result<Option<MoeWeights>> {
    if !spec.sparse[i] {
        return Ok(None);
    }
    let (block, [gate, up, down]) = match spec.family {
        "mixtral" => ("block_sparse_moe", ["w1", "w3", "w2"]),
        _ => ("mlp", ["gate_proj", "up_proj", "down_proj"]),
    };
    let n = |s: &str| format!("model.layers.{i}.{block}.{s}");
    let ff = spec.expert_ff;
    let experts = (0..spec.experts)
        .map(|e| {
            let x = |p: &str| n(&format!("experts.{e}.{p}.weight"));
            Ok(ExpertWeights {
                gate: st.matrix(&x(gate), ff, d)?,
                up: st.matrix(&x(up), ff, d)?,
                down: st.matrix(&x(down), d, ff)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(MoeWeights {
        router: st.matrix(&n("gate.weight"), spec.experts, d)?,
        experts,
        top_k: spec.top_k,
        norm_topk_prob: spec.norm_topk_prob,
    }))
}
