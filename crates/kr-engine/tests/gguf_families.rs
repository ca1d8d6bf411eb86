//! GGUF files of the tiny Hugging Face models of hf_families.rs, written by llama.cpp's own
//! converter (scripts/make_gguf_from_hf_tiny.py, f32), against the same transformers
//! references:
//! - `phi3`: fused `attn_qkv` and `ffn_up` (gate then up), LongRoPE from the
//!   `rope_factors_long` / `rope_factors_short` tensors, `phi3.rope.scaling.attn_factor`,
//!   `phi3.attention.sliding_window` = 0;
//! - `qwen2` with `qwen2.rope.scaling.type` = "yarn" (factor 4, original context 16);
//! - MistralForCausalLM, which the converter writes as `llama` (Q/K permuted for interleaved
//!   rotation) without its sliding window: llama.cpp's layout has no window for Mistral (nor
//!   for Qwen2 / Qwen3), so the file matches transformers on the same weights without the
//!   window (`logits_full`).
//!
//! - the tiny Llama with llama3 rope scaling, which the converter stores as `rope_freqs.weight`;
//! - Mixture-of-Experts: MixtralForCausalLM, which the converter writes as `llama` with
//!   `llama.expert_count`, and Qwen3-MoE (`qwen3moe`): the router `ffn_gate_inp` and each
//!   layer's experts stacked into `ffn_{gate,up,down}_exps`. The converter cannot write
//!   qwen3moe-f32 (its dense layer 1), and llama.cpp always renormalises qwen3moe's chosen
//!   experts, so the Qwen3-MoE file is of qwen3moe-norm-f32 (every layer sparse,
//!   norm_topk_prob true).
//! - Gemma 2 and Gemma 3 (`gemma2`, `gemma3`; norms already shifted by the converter, post-block
//!   norms, soft-capping keys, Gemma 3's `rope.freq_base_swa` and linear scaling). GGUF has no
//!   `query_pre_attn_scalar`: llama.cpp scales queries by `head_dim^-1/2` (by
//!   `(hidden / heads)^-1/2` for the 27B models) and kr-serve does the same, so the tiny
//!   models' scalar 24 (head_dim 16) is not in the files. Nor is Gemma 3's `layer_types`:
//!   llama.cpp's default period 6 makes both of gemma3-f32's layers slide (local base, no
//!   scaling). These files are checked against transformers' logits of the same weights
//!   configured as llama.cpp reads them (scalar 16; Gemma 3 with both layers sliding), which
//!   scripts/make_gguf_from_hf_tiny.py writes as `<name>.llama-cpp-reference.json` with the
//!   unchanged HF model's logits on the same ids (`logits_hf_config`). Gemma 3's converter
//!   cuts the embedding to the tokenizer's 390 tokens, so its input ids are folded below 390
//!   and its logits compared on those columns.
//!
//! Tolerance: 1e-4 absolute on every logit of every position, as in hf_families.rs.

mod common;

use kr_engine::RopeExtension;
use std::path::PathBuf;

const TOLERANCE: f32 = 1e-4;

fn gguf_path(name: &str) -> PathBuf {
    common::hf_tiny_dir(name).with_extension("gguf")
}

/// Loads `<name>.gguf`; its largest logit error against the reference's `key` table.
fn gguf_error(name: &str, key: &str) -> (kr_engine::LoadedModel, f32) {
    let model =
        kr_engine::load_model(&gguf_path(name)).unwrap_or_else(|e| panic!("{name}.gguf: {e}"));
    let worst = common::reference_error(&model, name, key);
    println!("{name}.gguf vs {key}: max |logit error| = {worst:.2e}");
    (model, worst)
}

/// The GGUF's configuration equals the Hugging Face directory's, but for the fields that
/// only say how the weights are stored; its tokenizer encodes text the same, BOS and EOS
/// included.
fn same_as_hf(name: &str, gguf: &kr_engine::LoadedModel) {
    let hf = kr_engine::load_model(&common::hf_tiny_dir(name)).unwrap();
    let mut hf_config = hf.config().clone();
    hf_config.rope_style = gguf.config().rope_style;
    if hf_config.architecture == "mixtral" {
        // llama.cpp has no Mixtral architecture: llama with experts.
        hf_config.architecture = "llama".into();
    }
    assert_eq!(
        &hf_config,
        gguf.config(),
        "{name}: GGUF and HF configurations"
    );
    let text = "Once upon a time, the quick brown fox said <|im_start|>hello 42!";
    let (a, b) = (&hf.tokenizer, &gguf.tokenizer);
    assert_eq!(
        a.encode(text, true).unwrap(),
        b.encode(text, true).unwrap(),
        "{name}"
    );
    assert_eq!((a.bos_id, &a.eos_ids), (b.bos_id, &b.eos_ids), "{name}");
}

#[test]
fn phi3_gguf_with_longrope_matches_transformers() {
    let (model, err) = gguf_error("phi3-longrope-f32", "logits");
    assert!(err <= TOLERANCE, "phi3-longrope.gguf: {err}");
    let c = model.config();
    assert_eq!(c.architecture, "phi3");
    assert_eq!(c.attention.sliding_window, None);
    match &c.attention.rope {
        RopeExtension::LongRope {
            short_factor,
            long_factor,
            original_max_position_embeddings,
        } => {
            assert_eq!(*original_max_position_embeddings, 32);
            assert_eq!((short_factor.len(), long_factor.len()), (8, 8));
            assert!((long_factor[7] - 7.3).abs() < 1e-6, "{long_factor:?}");
        }
        other => panic!("expected LongRoPE, got {other:?}"),
    }
    let af = c
        .attention
        .rope_attention_factor
        .expect("an attention factor");
    assert!(
        (af - (1.0f32 + 8f32.ln() / 32f32.ln()).sqrt()).abs() < 1e-6,
        "{af}"
    );
    same_as_hf("phi3-longrope-f32", &model);
}

/// Phi-4-mini's shape: `phi3.rope.dimension_count` below the head size (half of each head
/// rotates), with LongRoPE factors for the rotated pairs.
#[test]
fn phi3_gguf_with_partial_rotary_embeddings_matches_transformers() {
    let (model, err) = gguf_error("phi3-partial-f32", "logits");
    assert!(err <= TOLERANCE, "phi3-partial.gguf: {err}");
    assert_eq!(model.config().attention.rotary_dim, Some(8));
    same_as_hf("phi3-partial-f32", &model);
}

#[test]
fn qwen2_gguf_with_yarn_matches_transformers() {
    let (model, err) = gguf_error("qwen2-yarn-f32", "logits");
    assert!(err <= TOLERANCE, "qwen2-yarn.gguf: {err}");
    let c = model.config();
    assert_eq!(c.architecture, "qwen2");
    assert!(
        matches!(
            c.attention.rope,
            RopeExtension::Yarn {
                factor: 4.0,
                original_max_position_embeddings: 16,
                ..
            }
        ),
        "{:?}",
        c.attention.rope
    );
    same_as_hf("qwen2-yarn-f32", &model);
}

#[test]
fn mistral_gguf_is_llama_without_the_window_as_llama_cpp_writes_it() {
    let (model, err) = gguf_error("mistral-window-f32", "logits_full");
    assert!(err <= TOLERANCE, "mistral-window.gguf vs no window: {err}");
    let c = model.config();
    assert_eq!(c.architecture, "llama");
    assert_eq!(c.attention.sliding_window, None);
    let (_, with_window) = gguf_error("mistral-window-f32", "logits");
    assert!(
        with_window > 0.5,
        "the window should matter here ({with_window})"
    );
}

/// Llama 3.1's rope scaling reaches a GGUF file as llama.cpp's `rope_freqs.weight` tensor
/// (a divisor per dimension pair): applied, the tiny Llama (llama3 scaling, factor 8,
/// original context 64) matches transformers.
#[test]
fn llama_gguf_applies_its_rope_freqs_tensor() {
    let (model, err) = gguf_error("llama-f32", "logits");
    assert!(err <= TOLERANCE, "llama.gguf: {err}");
    assert!(matches!(
        model.config().attention.rope,
        RopeExtension::FreqFactors(ref f) if f.len() == 8
    ));
}

/// The input ids and transformers' logits of `name` configured as llama.cpp reads its GGUF
/// file, and of the unchanged HF model, both cut to the first `vocab` columns.
fn llama_cpp_references(
    name: &str,
    vocab: usize,
) -> (Vec<u32>, serde_json::Value, serde_json::Value) {
    let path = common::hf_tiny_dir(name).with_extension("llama-cpp-reference.json");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("reference file")).unwrap();
    let cut = |t: &serde_json::Value| -> serde_json::Value {
        t.as_array()
            .unwrap()
            .iter()
            .map(|row| row.as_array().unwrap()[..vocab].to_vec().into())
            .collect::<Vec<serde_json::Value>>()
            .into()
    };
    let ids = common::reference_ids(&r);
    (ids, cut(&r["logits"]), cut(&r["logits_hf_config"]))
}

/// Loads `<name>.gguf`; its largest logit errors against transformers configured as llama.cpp
/// reads the file, and against the original reference.
fn gemma_gguf(name: &str) -> (kr_engine::LoadedModel, f32, f32) {
    let model =
        kr_engine::load_model(&gguf_path(name)).unwrap_or_else(|e| panic!("{name}.gguf: {e}"));
    let vocab = model.config().vocab_size;
    let (ids, as_llama_cpp, original) = llama_cpp_references(name, vocab);
    let ours = common::logits_at(&model, &ids, &(0..ids.len()).collect::<Vec<_>>());
    let (err, vs_original) = (
        common::max_abs_diff(&ours, &as_llama_cpp),
        common::max_abs_diff(&ours, &original),
    );
    println!(
        "{name}.gguf: max |logit error| = {err:.2e} vs transformers as llama.cpp reads it, \
         {vs_original:.2e} vs the HF config"
    );
    (model, err, vs_original)
}

/// The GGUF's norms are the HF model's as kr-serve uses them (the converter's + 1, not
/// shifted again), its other weights the same values.
fn same_gemma_weights(name: &str, gguf: &kr_engine::LoadedModel) {
    let hf = kr_engine::load_model(&common::hf_tiny_dir(name)).unwrap();
    let (a, b) = (&hf.weights, &gguf.weights);
    assert_eq!(a.final_norm, b.final_norm, "{name} output_norm");
    for (i, (x, y)) in a.layers.iter().zip(&b.layers).enumerate() {
        assert_eq!(x.attn_norm, y.attn_norm, "{name} layer {i}");
        assert_eq!(x.ffn_norm, y.ffn_norm, "{name} layer {i}");
        assert_eq!(x.post_attn_norm, y.post_attn_norm, "{name} layer {i}");
        assert_eq!(x.post_ffn_norm, y.post_ffn_norm, "{name} layer {i}");
        assert!(y.post_ffn_norm.is_some(), "{name} layer {i}");
        assert_eq!(
            (&x.q_norm, &x.k_norm),
            (&y.q_norm, &y.k_norm),
            "{name} layer {i}"
        );
        assert_eq!(x.wq.to_f32(), y.wq.to_f32(), "{name} layer {i}");
        assert_eq!(x.w_down.to_f32(), y.w_down.to_f32(), "{name} layer {i}");
    }
}

/// Gemma 2 as llama.cpp writes it: soft-caps 5 and 3, window 6 on even layers (llama.cpp's
/// period 2), query scale head_dim (16, where the HF config says 24).
#[test]
fn gemma2_gguf_matches_transformers_as_llama_cpp_reads_it() {
    let (model, err, vs_original) = gemma_gguf("gemma2-f32");
    assert!(err <= TOLERANCE, "gemma2.gguf: {err}");
    assert!(
        vs_original > 1e-2,
        "the query scale should matter here ({vs_original})"
    );
    let c = model.config();
    assert_eq!(c.architecture, "gemma2");
    let a = &c.attention;
    assert_eq!(
        (a.query_scale, a.attn_logit_softcap, a.final_logit_softcap),
        (Some(16.0), Some(5.0), Some(3.0))
    );
    assert_eq!(
        (a.sliding_window, &a.sliding_layers),
        (Some(6), &vec![true, false])
    );
    same_gemma_weights("gemma2-f32", &model);
    // All else is the HF configuration.
    let hf = kr_engine::load_model(&common::hf_tiny_dir("gemma2-f32")).unwrap();
    let mut hf_config = hf.config().clone();
    hf_config.attention.query_scale = Some(16.0);
    assert_eq!(&hf_config, c);
}

/// Gemma 3 as llama.cpp writes it: global base 1e6 with linear scaling ×8, local base 10000
/// from `rope.freq_base_swa`, window 6 on both layers (llama.cpp's period 6), query scale 16,
/// the embedding cut to the tokenizer's 390 tokens.
#[test]
fn gemma3_gguf_matches_transformers_as_llama_cpp_reads_it() {
    let (model, err, vs_original) = gemma_gguf("gemma3-f32");
    assert!(err <= TOLERANCE, "gemma3.gguf: {err}");
    assert!(
        vs_original > 1e-2,
        "scale and window should matter here ({vs_original})"
    );
    let c = model.config();
    assert_eq!((c.architecture.as_str(), c.vocab_size), ("gemma3", 390));
    let a = &c.attention;
    assert_eq!(a.rope, RopeExtension::Linear(8.0));
    assert_eq!((c.rope_theta, a.local_rope_theta), (1e6, Some(1e4)));
    assert_eq!(
        (a.sliding_window, &a.sliding_layers),
        (Some(6), &vec![true, true])
    );
    assert_eq!(
        (a.query_scale, a.attn_logit_softcap, a.final_logit_softcap),
        (Some(16.0), None, None)
    );
    same_gemma_weights("gemma3-f32", &model);
    let hf = kr_engine::load_model(&common::hf_tiny_dir("gemma3-f32")).unwrap();
    let mut hf_config = hf.config().clone();
    hf_config.attention.query_scale = Some(16.0);
    hf_config.attention.sliding_layers = vec![true, true];
    hf_config.vocab_size = 390;
    assert_eq!(&hf_config, c);
}

/// Every layer of `gguf` holds `(experts, top_k, renormalised)` experts, and each expert's
/// matrices are the Hugging Face directory's, value for value.
fn same_experts(name: &str, gguf: &kr_engine::LoadedModel, expected: (usize, usize, bool)) {
    let hf = kr_engine::load_model(&common::hf_tiny_dir(name)).unwrap();
    for (i, (a, b)) in hf
        .weights
        .layers
        .iter()
        .zip(&gguf.weights.layers)
        .enumerate()
    {
        let (a, b) = (a.moe.as_ref().unwrap(), b.moe.as_ref().expect("experts"));
        assert_eq!(
            (b.experts.len(), b.top_k, b.norm_topk_prob),
            expected,
            "{name} layer {i}"
        );
        assert_eq!(
            a.router.to_f32(),
            b.router.to_f32(),
            "{name} layer {i} router"
        );
        for (x, (ea, eb)) in a.experts.iter().zip(&b.experts).enumerate() {
            for (ta, tb) in [(&ea.gate, &eb.gate), (&ea.up, &eb.up), (&ea.down, &eb.down)] {
                assert_eq!((ta.rows, ta.cols), (tb.rows, tb.cols), "{}", tb.name);
                assert_eq!(
                    ta.to_f32(),
                    tb.to_f32(),
                    "{name} layer {i} expert {x}: {}",
                    tb.name
                );
            }
        }
    }
}

/// Mixtral as llama.cpp writes it: arch `llama` with 4 experts of feed_forward_length rows,
/// 2 a token, renormalised.
#[test]
fn mixtral_gguf_is_llama_with_experts_and_matches_transformers() {
    let (model, err) = gguf_error("mixtral-f32", "logits");
    assert!(err <= TOLERANCE, "mixtral.gguf: {err}");
    assert_eq!(model.config().architecture, "llama");
    same_experts("mixtral-f32", &model, (4, 2, true));
    same_as_hf("mixtral-f32", &model);
}

/// Qwen3-MoE as llama.cpp writes it: 8 experts of `expert_feed_forward_length` (32) rows, 2 a
/// token, renormalised as llama.cpp does for qwen3moe (no key says so).
#[test]
fn qwen3moe_gguf_matches_transformers() {
    assert!(common::hf_tiny_error("qwen3moe-norm-f32", "logits") <= TOLERANCE);
    let (mut model, err) = gguf_error("qwen3moe-norm-f32", "logits");
    assert!(err <= TOLERANCE, "qwen3moe-norm.gguf: {err}");
    assert_eq!(model.config().architecture, "qwen3moe");
    assert_eq!(
        model.weights.layers[0].moe.as_ref().unwrap().experts[0]
            .gate
            .rows,
        32
    );
    same_experts("qwen3moe-norm-f32", &model, (8, 2, true));
    same_as_hf("qwen3moe-norm-f32", &model);
    // Renormalising matters here: without it the logits are far off.
    for l in &mut model.weights.layers {
        l.moe.as_mut().unwrap().norm_topk_prob = false;
    }
    let raw = common::reference_error(&model, "qwen3moe-norm-f32", "logits");
    println!("qwen3moe-norm-f32.gguf not renormalised: max |logit error| = {raw:.2e}");
    assert!(raw > 0.05, "renormalising should matter here ({raw})");
}

/// `models inspect` reads a GGUF file's experts: every layer, and the parameters of the 6
/// (Qwen3-MoE) or 2 (Mixtral) experts a token skips on each left out of the active count.
#[test]
fn inspect_counts_a_gguf_files_experts() {
    for (name, experts, ff) in [("qwen3moe-norm-f32", 8, 32), ("mixtral-f32", 4, 128)] {
        let s = kr_engine::inspect_model(&gguf_path(name)).unwrap();
        assert!(s.problems.is_empty(), "{name}: {:?}", s.problems);
        let x = s.experts.as_ref().expect("experts");
        assert_eq!((x.layers, x.experts, x.top_k), (2, experts, 2), "{name}");
        let skipped = 2 * (experts as u64 - 2) * 3 * ff * 64;
        assert_eq!(x.active_parameters, s.parameters - skipped, "{name}");
    }
}

/// A GGUF v3 file holding only `general.architecture` = `arch`.
fn gguf_of_arch(arch: &str) -> Vec<u8> {
    let string = |b: &mut Vec<u8>, s: &str| {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s.as_bytes());
    };
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes()); // tensors
    b.extend(1u64.to_le_bytes()); // metadata keys
    string(&mut b, "general.architecture");
    b.extend(8u32.to_le_bytes()); // a string value
    string(&mut b, arch);
    b
}

#[test]
fn an_unsupported_gguf_architecture_is_named_with_the_supported_ones() {
    let path = std::env::temp_dir().join(format!("kr-gguf-arch-{}.gguf", std::process::id()));
    std::fs::write(&path, gguf_of_arch("mamba")).unwrap();
    let e = kr_engine::load_model(&path)
        .err()
        .expect("mamba is not loaded")
        .to_string();
    let _ = std::fs::remove_file(&path);
    assert!(e.contains("'mamba'"), "{e}");
    assert!(
        e.contains("llama (Mixtral included), qwen2, qwen3, qwen3moe, phi3, gemma2, gemma3 (GGUF)"),
        "{e}"
    );
}
