//! Gemma 2 and Gemma 3 (text) in GGUF files as llama.cpp's converter writes them and
//! llama.cpp reads them (src/models/gemma2.cpp, gemma3.cpp):
//!
//! - norm gains: the converter already adds Gemma's 1 to every `*norm.weight`, so they are
//!   read as they are (the Hugging Face reader shifts them at load instead);
//! - tensors: `blk.N.post_attention_norm.weight` and `blk.N.post_ffw_norm.weight` after the
//!   attention and the feed-forward, `ffn_norm` before it; Gemma 3's `attn_q_norm` /
//!   `attn_k_norm`; no `output.weight` (tied);
//! - the attention scale: GGUF has no `query_pre_attn_scalar`. llama.cpp scales queries by
//!   `head_dim^-1/2` (`attention.key_length`), but by `(hidden / heads)^-1/2` for the 27B
//!   models, which it recognises by their layer count (46 for Gemma 2, 62 for Gemma 3); the
//!   released checkpoints' scalars are exactly these. kr-serve computes the same, so a file
//!   converted from a model with another scalar runs as llama.cpp runs it;
//! - soft-capping: Gemma 2 always caps, with `gemma2.attn_logit_softcapping` (default 50)
//!   and `final_logit_softcapping` (default 30); Gemma 3 caps the output logits only when
//!   `gemma3.final_logit_softcapping` is set and not 0;
//! - windows: `<arch>.attention.sliding_window` (Gemma 2's default 4096; Gemma 3 without it,
//!   or with 0, has none) on the layers of `attention.sliding_window_pattern` (flags or a
//!   period), whose default is llama.cpp's period 2 for Gemma 2 (even layers slide) and 6
//!   for Gemma 3 (layer `i` slides when `i % 6 < 5`). The converter writes no pattern, so a
//!   Hugging Face config whose `layer_types` differ from that period converts to a model
//!   that slides elsewhere;
//! - RoPE: NEOX (half-split); `<arch>.rope.freq_base` on global layers with linear scaling
//!   (`rope.scaling.type` "linear", `rope.scaling.factor`); Gemma 3's sliding layers rotate
//!   with `gemma3.rope.freq_base_swa` (llama.cpp's default 10000) and no scaling. Gemma 2's
//!   sliding layers use the global base and scaling unless `rope.freq_base_swa` is given.

use crate::config::{AttentionExt, RopeExtension};
use crate::error::Result;
use crate::gguf::GgufFile;
use crate::gguf_model::{meta_err, opt_f64};

pub use crate::hf_gemma::is_gemma;

/// llama.cpp's window and pattern period for `arch` when the file sets neither.
pub(crate) fn sliding_defaults(arch: &str) -> (Option<usize>, u64) {
    match arch {
        "gemma2" => (Some(4096), 2),
        _ => (None, 6),
    }
}

/// Gemma's features of a GGUF file, as llama.cpp computes them (see the module notes),
/// given the RoPE extension already read (linear scaling on the global layers).
pub(crate) fn features(
    f: &GgufFile,
    arch: &str,
    hidden: usize,
    num_heads: usize,
    head_dim: usize,
    layers: usize,
    rope: &RopeExtension,
) -> Result<AttentionExt> {
    let key = |k: &str| format!("{arch}.{k}");
    let num = |k: &str| -> Result<Option<f32>> { Ok(opt_f64(f, &key(k))?.map(|v| v as f32)) };
    let is_27b = matches!((arch, layers), ("gemma2", 46) | ("gemma3", 62));
    let query_scale = match is_27b {
        true => (hidden / num_heads.max(1)) as f32,
        false => head_dim as f32,
    };
    let nonzero = |v: Option<f32>| v.filter(|&c| c != 0.0);
    let (attn_cap, final_cap) = match arch {
        "gemma2" => (
            Some(num("attn_logit_softcapping")?.unwrap_or(50.0)),
            Some(num("final_logit_softcapping")?.unwrap_or(30.0)),
        ),
        _ => (None, nonzero(num("final_logit_softcapping")?)),
    };
    let swa_base = num("rope.freq_base_swa")?;
    let local_rope_theta = match arch {
        "gemma3" => Some(swa_base.unwrap_or(10_000.0)),
        _ => {
            if swa_base.is_some() && *rope != RopeExtension::None {
                return Err(meta_err(
                    f,
                    &key("rope.freq_base_swa"),
                    "absent with RoPE scaling (Gemma 2's sliding layers keep the scaling)",
                ));
            }
            swa_base
        }
    };
    Ok(AttentionExt {
        embed_scale: Some((hidden as f32).sqrt()),
        query_scale: Some(query_scale),
        attn_logit_softcap: attn_cap,
        final_logit_softcap: final_cap,
        gelu_ffn: true,
        local_rope_theta,
        ..AttentionExt::default()
    })
}

/// Gemma's norms after the attention and the feed-forward of layer `i`.
pub(crate) fn post_norms(
    f: &GgufFile,
    i: usize,
    hidden: usize,
) -> Result<(Option<Vec<f32>>, Option<Vec<f32>>)> {
    let n = |s: &str| format!("blk.{i}.{s}");
    Ok((
        Some(crate::gguf_model::vector(
            f,
            &n("post_attention_norm.weight"),
            hidden,
        )?),
        Some(crate::gguf_model::vector(
            f,
            &n("post_ffw_norm.weight"),
            hidden,
        )?),
    ))
}

#[cfg(test)]
mod tests {
    use crate::gguf_model::config_from_gguf;
    use crate::gguf_model::tests::{file, M};

    /// Base file: hidden 8, 2 heads, 2 layers; `key_length` 16 makes head_dim differ from
    /// hidden / heads.
    fn cfg(arch: &'static str, extra: Vec<(&str, M)>) -> crate::config::ModelConfig {
        let mut meta = vec![("attention.key_length", M::U32(16))];
        meta.extend(extra);
        config_from_gguf(&file(arch, meta, &[])).unwrap()
    }

    #[test]
    fn gemma2_defaults_are_llama_cpps() {
        let c = cfg("gemma2", vec![]);
        let a = &c.attention;
        assert_eq!(c.rope_style, crate::config::RopeStyle::HalfSplit);
        assert_eq!(a.query_scale, Some(16.0));
        assert_eq!(
            (a.attn_logit_softcap, a.final_logit_softcap),
            (Some(50.0), Some(30.0))
        );
        assert_eq!(a.sliding_window, Some(4096));
        assert_eq!(a.sliding_layers, vec![true, false]);
        assert_eq!(a.local_rope_theta, None);
        assert_eq!(a.embed_scale, Some(8f32.sqrt()));
        assert!(a.gelu_ffn);
    }

    #[test]
    fn gemma3_window_pattern_local_base_and_linear_scaling() {
        let c = cfg(
            "gemma3",
            vec![
                ("attention.sliding_window", M::U32(6)),
                ("rope.scaling.type", M::Str("linear")),
                ("rope.scaling.factor", M::F32(8.0)),
                ("rope.freq_base", M::F32(1e6)),
                ("rope.freq_base_swa", M::F32(5e3)),
            ],
        );
        let a = &c.attention;
        assert_eq!(a.rope, crate::config::RopeExtension::Linear(8.0));
        assert_eq!(a.sliding_window, Some(6));
        // llama.cpp's period 6: both of two layers slide.
        assert_eq!(a.sliding_layers, vec![true, true]);
        assert_eq!(a.local_rope_theta, Some(5e3));
        assert_eq!((a.attn_logit_softcap, a.final_logit_softcap), (None, None));
        let c = cfg("gemma3", vec![]);
        assert_eq!(c.attention.sliding_window, None);
        assert_eq!(c.attention.local_rope_theta, Some(10_000.0));
        let c = cfg("gemma3", vec![("final_logit_softcapping", M::F32(30.0))]);
        assert_eq!(c.attention.final_logit_softcap, Some(30.0));
    }

    /// llama.cpp's 27B rule: `(hidden / heads)^-1/2` on Gemma 2 with 46 layers and Gemma 3
    /// with 62, `head_dim^-1/2` otherwise.
    #[test]
    fn the_27b_models_scale_by_hidden_over_heads() {
        for (arch, layers) in [("gemma2", 46), ("gemma3", 62)] {
            let c = cfg(arch, vec![("block_count", M::U32(layers))]);
            assert_eq!(c.attention.query_scale, Some(4.0), "{arch}");
            assert_eq!(c.num_layers, layers as usize);
            let c = cfg(arch, vec![("block_count", M::U32(layers - 1))]);
            assert_eq!(c.attention.query_scale, Some(16.0), "{arch}");
        }
    }
}
