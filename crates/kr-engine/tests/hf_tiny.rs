//! Tiny random-weight Hugging Face models (Llama with llama3 rope scaling, Qwen2 with qkv
//! bias, Qwen3 with q/k norm, Mistral), each in f32 and bf16, loaded from their directories
//! and compared with transformers' logits at every position. Models and references:
//! tests/reference/hf-tiny, made by scripts/make_hf_tiny_models.py (transformers 5.23).
//!
//! Tolerances (absolute, every logit of every position; logits are O(1..10)):
//! - f32: 1e-4 — the same f32 arithmetic summed in a different order;
//! - bf16: 1e-4 — the weights are bf16 and both sides compute in f32 (the reference loads
//!   the bf16 checkpoint with dtype=float32), so only the summation order differs.
//!
//! The measured maximum errors are printed (`cargo test --test hf_tiny -- --nocapture`).

mod common;

use kr_engine::load_model;
use kr_model::ChatMessage;
use serde_json::Value;
use std::path::PathBuf;

const F32_TOLERANCE: f32 = 1e-4;
const BF16_TOLERANCE: f32 = 1e-4;

fn dir(name: &str) -> PathBuf {
    common::hf_tiny_dir(name)
}

fn json(path: PathBuf) -> Value {
    serde_json::from_str(&std::fs::read_to_string(&path).expect("reference file"))
        .expect("reference JSON")
}

fn max_error(name: &str) -> f32 {
    common::hf_tiny_error(name, "logits")
}

fn check(arch: &str) {
    let f32_err = max_error(&format!("{arch}-f32"));
    assert!(f32_err <= F32_TOLERANCE, "{arch}-f32: {f32_err}");
    let bf16_err = max_error(&format!("{arch}-bf16"));
    assert!(bf16_err <= BF16_TOLERANCE, "{arch}-bf16: {bf16_err}");
}

#[test]
fn llama_with_llama3_rope_scaling_matches_transformers() {
    check("llama");
}

#[test]
fn qwen2_with_qkv_bias_matches_transformers() {
    check("qwen2");
}

#[test]
fn qwen3_with_qk_norm_matches_transformers() {
    check("qwen3");
}

#[test]
fn mistral_matches_transformers() {
    check("mistral");
}

#[test]
fn directory_brings_tokenizer_template_and_special_tokens() {
    let model = load_model(&dir("qwen2-f32")).unwrap();
    let cfg = model.config();
    assert_eq!(cfg.architecture, "qwen2");
    assert_eq!(
        (cfg.num_layers, cfg.hidden_size, cfg.vocab_size),
        (2, 64, 512)
    );
    assert_eq!(model.tokenizer.bos_id, Some(1));
    assert_eq!(model.tokenizer.eos_ids, vec![2]);
    let text = model
        .chat_template
        .as_ref()
        .expect("chat_template.jinja")
        .render(&[ChatMessage::new("user", "Hi")], true)
        .unwrap();
    assert_eq!(
        text,
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    let ids = model.tokenizer.encode("Hello world!", false).unwrap();
    assert_eq!(model.tokenizer.decode(&ids).unwrap(), "Hello world!");
}

#[test]
fn llama_config_reads_rope_parameters() {
    let model = load_model(&dir("llama-bf16")).unwrap();
    let cfg = model.config();
    assert_eq!(cfg.rope_theta, 500000.0);
    let s = cfg.rope_scaling.expect("llama3 rope scaling");
    assert_eq!((s.factor, s.original_max_position_embeddings), (8.0, 64));
    assert!(cfg.tie_embeddings);
}

#[test]
fn sharded_checkpoint_loads_through_its_index() {
    assert!(dir("mistral-f32")
        .join("model.safetensors.index.json")
        .is_file());
    assert!(max_error("mistral-f32") <= F32_TOLERANCE);
}

/// A copy of qwen2-f32 with `edit` applied to its config.json; returns the load error.
fn error_with_config(tag: &str, edit: impl FnOnce(&mut Value)) -> String {
    let tmp = std::env::temp_dir().join(format!("kr-hf-tiny-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    for e in std::fs::read_dir(dir("qwen2-f32")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), tmp.join(e.file_name())).unwrap();
    }
    let mut cfg = json(tmp.join("config.json"));
    edit(&mut cfg);
    std::fs::write(tmp.join("config.json"), cfg.to_string()).unwrap();
    let err = load_model(&tmp).err().expect("load fails").to_string();
    std::fs::remove_dir_all(&tmp).unwrap();
    err
}

#[test]
fn errors_name_the_file_field_or_tensor() {
    let e = error_with_config("arch", |c| c["architectures"][0] = "GPT2LMHeadModel".into());
    assert!(
        e.contains("config.json") && e.contains("GPT2LMHeadModel"),
        "{e}"
    );
    assert!(
        e.contains("Qwen3ForCausalLM"),
        "names what is supported: {e}"
    );
    let e = error_with_config("layers", |c| c["num_hidden_layers"] = 3.into());
    assert!(e.contains("model.layers.2.input_layernorm.weight"), "{e}");
    let e = error_with_config("shape", |c| c["intermediate_size"] = 96.into());
    assert!(
        e.contains("mlp.gate_proj.weight") && e.contains("[96, 64]"),
        "{e}"
    );
    let e = error_with_config("field", |c| c["hidden_size"] = Value::Null);
    assert!(e.contains("hidden_size"), "{e}");
    let e = load_model(&dir("no-such-model")).err().unwrap().to_string();
    assert!(e.contains("no-such-model"), "{e}");
}
