//! RoPE and attention variants of current model families against transformers, on tiny
//! random-weight Hugging Face models (tests/reference/hf-tiny/*-f32, made by
//! scripts/make_hf_tiny_families.py with transformers 5.25, eager attention):
//! - Phi-3 (fused qkv and gate_up projections) with LongRoPE, 48 tokens past an original
//!   context of 32 (transformers then uses the long factors, as kr-serve does when the model's
//!   context exceeds the original);
//! - Phi-3 with half of each head rotating (Phi-4-mini's `partial_rotary_factor`);
//! - Qwen2 with YaRN (factor 4), 40 tokens past an original context of 16;
//! - a sliding window on every layer (Mistral, window 6) and on one layer of two (Qwen3,
//!   `max_window_layers`), where the window changes the logits by several units;
//! - Mixture-of-Experts: Qwen3-MoE (8 experts, top 2, probabilities not renormalised, one
//!   dense layer) and Mixtral (4 experts, top 2, renormalised);
//! - Gemma 2 (GeGLU, `(1 + w)` norms, post-norms, scaled embeddings, query scale, attention
//!   and final soft-capping, a window on every other layer) and Gemma 3 (q/k norms, a local
//!   RoPE base on sliding layers, linear scaling on global ones).
//!
//! Tolerance: 1e-4 absolute on every logit of every position (f32 both sides, logits
//! O(1..10); only the summation order differs).

mod common;

const TOLERANCE: f32 = 1e-4;

#[test]
fn phi3_with_longrope_matches_transformers_past_the_original_context() {
    let err = common::hf_tiny_error("phi3-longrope-f32", "logits");
    assert!(err <= TOLERANCE, "phi3-longrope: {err}");
    let model = kr_engine::load_model(&common::hf_tiny_dir("phi3-longrope-f32")).unwrap();
    assert_eq!(model.config().architecture, "phi3");
}

/// Phi-4-mini's shape: only half of each head rotates (`partial_rotary_factor` 0.5), with
/// LongRoPE factors for those dimensions.
#[test]
fn phi3_with_partial_rotary_embeddings_matches_transformers() {
    let err = common::hf_tiny_error("phi3-partial-f32", "logits");
    assert!(err <= TOLERANCE, "phi3-partial: {err}");
    let model = kr_engine::load_model(&common::hf_tiny_dir("phi3-partial-f32")).unwrap();
    assert_eq!(model.config().attention.rotary_dim, Some(8));
    // Until its GPU kernels have been checked there, `device: auto` keeps it on the CPU
    // (this process never sets KR_CUDA_PARTIAL_ROPE).
    let why = model
        .weights
        .beyond_the_gpu_kernels()
        .expect("kept off the GPU");
    assert!(why.contains("partial rotary"), "{why}");
}

#[test]
fn qwen2_with_yarn_matches_transformers_past_the_original_context() {
    let err = common::hf_tiny_error("qwen2-yarn-f32", "logits");
    assert!(err <= TOLERANCE, "qwen2-yarn: {err}");
}

/// The model matches transformers with its window, and the window changes the answer: the
/// same weights without it are far from our logits.
fn check_window(name: &str, window: usize) {
    let model = kr_engine::load_model(&common::hf_tiny_dir(name)).unwrap();
    assert_eq!(model.config().attention.sliding_window, Some(window));
    let err = common::hf_tiny_error(name, "logits");
    assert!(err <= TOLERANCE, "{name}: {err}");
    let without = common::hf_tiny_error(name, "logits_full");
    assert!(
        without > 0.5,
        "{name}: the window should change the logits ({without})"
    );
}

#[test]
fn sliding_window_on_every_layer_matches_transformers() {
    check_window("mistral-window-f32", 6);
}

#[test]
fn sliding_window_on_some_layers_matches_transformers() {
    check_window("qwen3-window-f32", 5);
    let model = kr_engine::load_model(&common::hf_tiny_dir("qwen3-window-f32")).unwrap();
    let c = model.config();
    assert_eq!(
        (c.window_of_layer(0), c.window_of_layer(1)),
        (None, Some(5))
    );
}

#[test]
fn qwen3_moe_matches_transformers() {
    let err = common::hf_tiny_error("qwen3moe-f32", "logits");
    assert!(err <= TOLERANCE, "qwen3moe: {err}");
    let model = kr_engine::load_model(&common::hf_tiny_dir("qwen3moe-f32")).unwrap();
    let layers = &model.weights.layers;
    let moe = layers[0].moe.as_ref().expect("layer 0 has experts");
    assert_eq!(
        (moe.experts.len(), moe.top_k, moe.norm_topk_prob),
        (8, 2, false)
    );
    assert!(
        layers[1].moe.is_none(),
        "mlp_only_layers keeps layer 1 dense"
    );
}

#[test]
fn mixtral_matches_transformers() {
    let err = common::hf_tiny_error("mixtral-f32", "logits");
    assert!(err <= TOLERANCE, "mixtral: {err}");
    let model = kr_engine::load_model(&common::hf_tiny_dir("mixtral-f32")).unwrap();
    assert!(model
        .weights
        .layers
        .iter()
        .all(|l| l.moe.as_ref().is_some_and(|m| m.norm_topk_prob)));
}

#[test]
fn gemma2_matches_transformers() {
    check_window("gemma2-f32", 6);
    let model = kr_engine::load_model(&common::hf_tiny_dir("gemma2-f32")).unwrap();
    let a = &model.config().attention;
    assert_eq!(
        (a.attn_logit_softcap, a.final_logit_softcap),
        (Some(5.0), Some(3.0))
    );
    assert_eq!((a.query_scale, a.gelu_ffn), (Some(24.0), true));
    let c = model.config();
    assert_eq!(
        (c.window_of_layer(0), c.window_of_layer(1)),
        (Some(6), None)
    );
}

#[test]
fn gemma3_matches_transformers() {
    check_window("gemma3-f32", 6);
    let model = kr_engine::load_model(&common::hf_tiny_dir("gemma3-f32")).unwrap();
    let c = model.config();
    assert_eq!(c.attention.local_rope_theta, Some(10_000.0));
    assert_eq!(c.rope_theta, 1_000_000.0);
    assert_eq!(c.attention.rope, kr_engine::RopeExtension::Linear(8.0));
}

/// The text part of a multimodal Gemma 3 checkpoint (`Gemma3ForConditionalGeneration`:
/// `text_config`, weights under `language_model.model.`) runs as Gemma 3 text: its language
/// model holds gemma3-f32's weights, so its logits are gemma3-f32's reference.
#[test]
fn gemma3_multimodal_checkpoint_runs_its_text_part() {
    let model = kr_engine::load_model(&common::hf_tiny_dir("gemma3-mm-f32")).unwrap();
    assert_eq!(model.config().architecture, "gemma3");
    let err = common::reference_error(&model, "gemma3-f32", "logits");
    assert!(err <= TOLERANCE, "gemma3-mm: {err}");
}

/// Through the engine, a windowed model (every layer slides) releases its KV blocks behind
/// the window while it generates, in small blocks and chunks, far past the window; each
/// greedy token is still the top logit of one full forward pass over the whole text.
#[test]
fn engine_generation_past_the_window_frees_blocks_and_stays_exact() {
    let dir = common::hf_tiny_dir("mistral-window-f32");
    let mut cfg = kr_engine::EngineConfig::new(&dir);
    cfg.block_size = 4;
    cfg.num_kv_blocks = Some(12);
    cfg.max_num_batched_tokens = 8;
    let engine = kr_engine::start(cfg).expect("engine");
    let prompt: Vec<u32> = (0..20).map(|i| 5 + (i * 37) % 400).collect();
    let mut stream = engine
        .submit(kr_engine::GenerateRequest {
            prompt: kr_engine::Prompt::Tokens(prompt.clone()),
            params: kr_engine::SamplingParams {
                ignore_eos: true,
                ..kr_engine::SamplingParams::greedy(24)
            },
        })
        .expect("submitted");
    let out = common::collect(&mut stream);
    assert_eq!(out.ids.len(), 24);
    common::wait_for_blocks(&engine, 0);
    let model = kr_engine::load_model(&dir).unwrap();
    let text: Vec<u32> = prompt.iter().chain(&out.ids).copied().collect();
    let rows: Vec<usize> = (prompt.len() - 1..text.len() - 1).collect();
    for (logits, &token) in common::logits_at(&model, &text, &rows).iter().zip(&out.ids) {
        let best =
            (0..logits.len()).max_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(b.cmp(&a)));
        assert_eq!(best, Some(token as usize));
    }
}
