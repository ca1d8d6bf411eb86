//! Gemma 2 and Gemma 3 (text) in Hugging Face directories: the config in both styles
//! (transformers 5's `layer_types` and per-layer-type `rope_parameters`; the older
//! `rope_local_base_freq`, `rope_scaling` and `sliding_window_pattern`), the text part of
//! `Gemma3ForConditionalGeneration` checkpoints, and the weights' Gemma conventions: RMSNorm
//! gains stored as `w` for a `(1 + w)` scale, and norms after each block.
//!
//! Invariant: after [`normalize`], a Gemma config reads like any other (one `rope_parameters`
//! for the global layers, `rope_local_base_freq` for the sliding ones).

use crate::config::AttentionExt;
use crate::weights::ModelWeights;
use serde_json::Value;

/// True for the architecture names this module handles.
pub fn is_gemma(family: &str) -> bool {
    family == "gemma2" || family == "gemma3"
}

/// The text config of a multimodal Gemma 3 checkpoint, and per-layer-type RoPE parameters
/// split into the global set and the local base.
pub fn normalize(cfg: &Value) -> Value {
    let mut c = match cfg["architectures"][0].as_str() {
        Some("Gemma3ForConditionalGeneration") if cfg["text_config"].is_object() => {
            let mut text = cfg["text_config"].clone();
            text["architectures"] = serde_json::json!(["Gemma3ForCausalLM"]);
            if text.get("tie_word_embeddings").is_none() {
                text["tie_word_embeddings"] = cfg["tie_word_embeddings"].clone();
            }
            text
        }
        _ => cfg.clone(),
    };
    fill_defaults(&mut c);
    if let Some(full) = c["rope_parameters"].get("full_attention").cloned() {
        let local = c["rope_parameters"]["sliding_attention"]["rope_theta"].clone();
        c["rope_parameters"] = full;
        if local.is_number() {
            c["rope_local_base_freq"] = local;
        }
    }
    c
}

/// Released Gemma 3 multimodal checkpoints leave many `text_config` keys out and rely on
/// transformers' `Gemma3TextConfig` defaults (and Gemma 2 configs on `Gemma2Config`'s):
/// absent keys get those defaults (a key present as `null` keeps its meaning).
fn fill_defaults(c: &mut Value) {
    use serde_json::json;
    let defaults = match c["architectures"][0].as_str() {
        Some("Gemma3ForCausalLM") => json!({
            "vocab_size": 262208, "max_position_embeddings": 131072, "rope_theta": 1000000.0,
            "rope_local_base_freq": 10000.0,
        }),
        Some("Gemma2ForCausalLM") => json!({
            "vocab_size": 256000, "max_position_embeddings": 8192, "rope_theta": 10000.0,
            "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
        }),
        _ => return,
    };
    let shared = json!({
        "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
        "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
        "rms_norm_eps": 1e-6, "query_pre_attn_scalar": 256, "sliding_window": 4096,
        "tie_word_embeddings": true,
    });
    let Some(obj) = c.as_object_mut() else { return };
    let has_rope = obj.contains_key("rope_parameters") || obj.contains_key("rope_theta");
    for (k, v) in shared
        .as_object()
        .into_iter()
        .flatten()
        .chain(defaults.as_object().into_iter().flatten())
    {
        // A config with RoPE parameters of its own keeps them.
        let skip = k == "rope_theta" && has_rope;
        if !obj.contains_key(k) && !skip {
            obj.insert(k.clone(), v.clone());
        }
    }
}

/// Gemma's features of `cfg` (already [`normalize`]d), and which layers slide when the
/// config has no `layer_types`: every other layer from the first (Gemma 2), or all but each
/// `sliding_window_pattern`-th (Gemma 3, default 6).
pub fn features(
    cfg: &Value,
    family: &str,
    hidden: usize,
    layers: usize,
) -> (AttentionExt, Vec<bool>) {
    let f = |k: &str| cfg[k].as_f64().map(|v| v as f32);
    let ext = AttentionExt {
        embed_scale: Some((hidden as f32).sqrt()),
        query_scale: f("query_pre_attn_scalar"),
        attn_logit_softcap: f("attn_logit_softcapping"),
        final_logit_softcap: f("final_logit_softcapping"),
        gelu_ffn: true,
        local_rope_theta: match family {
            "gemma3" => Some(f("rope_local_base_freq").unwrap_or(10_000.0)),
            _ => None,
        },
        ..AttentionExt::default()
    };
    let pattern = cfg["sliding_window_pattern"]
        .as_u64()
        .or(cfg["_sliding_window_pattern"].as_u64())
        .unwrap_or(6)
        .max(1) as usize;
    let sliding = (0..layers)
        .map(|i| match family {
            "gemma2" => i % 2 == 0,
            _ => (i + 1) % pattern != 0,
        })
        .collect();
    (ext, sliding)
}

/// Gemma stores RMSNorm gains as `w` and scales by `1 + w`: adds the one to every norm.
pub fn shift_norm_gains(w: &mut ModelWeights) {
    let shift = |v: &mut Vec<f32>| v.iter_mut().for_each(|g| *g += 1.0);
    shift(&mut w.final_norm);
    for l in &mut w.layers {
        shift(&mut l.attn_norm);
        shift(&mut l.ffn_norm);
        for v in [
            &mut l.post_attn_norm,
            &mut l.post_ffn_norm,
            &mut l.q_norm,
            &mut l.k_norm,
        ]
        .into_iter()
        .flatten()
        {
            shift(v);
        }
    }
}
