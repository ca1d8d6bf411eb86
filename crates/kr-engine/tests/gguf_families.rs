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
//! - the tiny Llama with llama3 rope scaling, which the converter stores as `rope_freqs.weight`.
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
    let r = common::hf_tiny_reference(name);
    let ids: Vec<u32> = r["input_ids"]
        .as_array()
        .expect("input_ids")
        .iter()
        .map(|v| v.as_u64().expect("a token id") as u32)
        .collect();
    let ours = common::logits_at(&model, &ids, &(0..ids.len()).collect::<Vec<_>>());
    let worst = common::max_abs_diff(&ours, &r[key]);
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
    std::fs::write(&path, gguf_of_arch("gemma2")).unwrap();
    let e = kr_engine::load_model(&path)
        .err()
        .expect("gemma2 is not loaded")
        .to_string();
    let _ = std::fs::remove_file(&path);
    assert!(e.contains("'gemma2'"), "{e}");
    assert!(e.contains("llama, qwen2, qwen3, phi3 (GGUF)"), "{e}");
}
