#!/usr/bin/env python3
"""Tiny random-weight Hugging Face models of the attention and RoPE variants of issue 20, with
transformers' logits at every position (f32).

- phi3-longrope: Phi3ForCausalLM (fused qkv_proj and gate_up_proj) with LongRoPE: original
  context 32, model context 256, 48 input tokens, so transformers uses the long factors.
- phi3-partial: Phi-4-mini's shape of Phi3ForCausalLM: half of each head rotates
  (partial_rotary_factor 0.5) with LongRoPE factors for those dimensions, tied embeddings.
- qwen2-yarn: Qwen2ForCausalLM with YaRN (factor 4, original context 16), 40 input tokens.
- mistral-window: MistralForCausalLM with a sliding window of 6 on every layer; also the
  logits of the same weights without the window (`logits_full`), to show the window matters.
- qwen3-window: Qwen3ForCausalLM with a window of 5 on layer 1 only (max_window_layers 1).
- qwen3moe: Qwen3MoeForCausalLM, 8 experts, 2 a token, probabilities not renormalised
  (norm_topk_prob false), layer 1 dense (mlp_only_layers).
- mixtral: MixtralForCausalLM, 4 experts, 2 a token.
- gemma2: Gemma2ForCausalLM: GeGLU, (1 + w) norms, post-norms, scaled embeddings, query
  scale 24, attention soft-cap 5 and final soft-cap 3 (small, so they change the logits),
  window 6 on every other layer.
- gemma3: Gemma3ForCausalLM: q/k norms, window 6 on layer 0 with local base 10000, global
  layer 1 with base 1e6 and linear scaling ×8 (per-layer-type rope_parameters).
- gemma3-mm: Gemma3ForConditionalGeneration with gemma3's language model (and a tiny random
  vision tower), for the text part of multimodal checkpoints.
- qwen3moe-norm: Qwen3MoeForCausalLM as llama.cpp's `qwen3moe` can hold it (for
  scripts/make_gguf_from_hf_tiny.py): every layer sparse (its converter cannot map a dense
  layer's mlp.*_proj) and norm_topk_prob true (llama.cpp always renormalises), like
  Qwen3-30B-A3B; 8 experts, 2 a token.

Writes tests/reference/hf-tiny/<name>-f32/ like scripts/make_hf_tiny_models.py (whose
tokenizer and settings it reuses). Run (CPU; torch 2.15, transformers 5.25):
    /work/venv-tf/bin/python scripts/make_hf_tiny_families.py
"""
import copy
import json
import os
import shutil
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_hf_tiny_models as base  # noqa: E402

HD = base.COMMON["hidden_size"] // base.COMMON["num_attention_heads"]
FAMILIES = {
    "phi3-longrope": (transformers.Phi3Config, dict(
        max_position_embeddings=256, original_max_position_embeddings=32, pad_token_id=0,
        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                         "short_factor": [1.0 + 0.05 * i for i in range(HD // 2)],
                         "long_factor": [1.0 + 0.9 * i for i in range(HD // 2)]},
        sliding_window=None, tie_word_embeddings=False), 48),
    "phi3-partial": (transformers.Phi3Config, dict(
        max_position_embeddings=256, original_max_position_embeddings=32, pad_token_id=0,
        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                         "short_factor": [1.0 + 0.05 * i for i in range(HD // 4)],
                         "long_factor": [1.0 + 0.9 * i for i in range(HD // 4)]},
        sliding_window=None, tie_word_embeddings=True), 48),
    "qwen2-yarn": (transformers.Qwen2Config, dict(
        max_position_embeddings=64,
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                         "original_max_position_embeddings": 16},
        tie_word_embeddings=False), 40),
    "mistral-window": (transformers.MistralConfig, dict(
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False, sliding_window=6), 24),
    "qwen3-window": (transformers.Qwen3Config, dict(
        head_dim=16, tie_word_embeddings=True, use_sliding_window=True, sliding_window=5,
        max_window_layers=1, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}), 24),
    "qwen3moe": (transformers.Qwen3MoeConfig, dict(
        head_dim=16, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
        norm_topk_prob=False, mlp_only_layers=[1], tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}), 24),
    "gemma2": (transformers.Gemma2Config, dict(
        head_dim=16, query_pre_attn_scalar=24, sliding_window=6, attn_logit_softcapping=5.0,
        final_logit_softcapping=3.0, pad_token_id=0,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}), 24),
    "gemma3": (transformers.Gemma3TextConfig, dict(
        head_dim=16, query_pre_attn_scalar=24, sliding_window=6, pad_token_id=0,
        layer_types=["sliding_attention", "full_attention"],
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}), 24),
    "mixtral": (transformers.MixtralConfig, dict(
        num_local_experts=4, num_experts_per_tok=2, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}), 24),
    "qwen3moe-norm": (transformers.Qwen3MoeConfig, dict(
        head_dim=16, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
        norm_topk_prob=True, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}), 24),
}


def logits_of(model, ids):
    with torch.no_grad():
        out = model(torch.tensor([ids])).logits[0]
    return [[round(float(x), 5) for x in row] for row in out]


def build(name, cls, extra, n_tokens, tokenizer):
    torch.manual_seed(4321)
    common = dict(base.COMMON, max_position_embeddings=extra.pop("max_position_embeddings", 256))
    cfg = cls(**common, **extra)
    cfg._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2) if p.dim() > 1 else p.add_(torch.randn_like(p) * 0.1)
    gen = torch.Generator().manual_seed(7)
    ids = [1] + torch.randint(5, base.COMMON["vocab_size"], (n_tokens - 1,), generator=gen).tolist()
    d = os.path.join(base.OUT, f"{name}-f32")
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d, safe_serialization=True)
    tokenizer.save_pretrained(d)
    loaded = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    loaded.eval()
    ref = {"arch": name, "dtype": "f32", "torch": torch.__version__,
           "transformers": transformers.__version__, "input_ids": ids,
           "logits": logits_of(loaded, ids)}
    if getattr(cfg, "sliding_window", None):
        full_cfg = copy.deepcopy(loaded.config)
        if name.startswith("gemma"):
            # Gemma always builds its sliding mask: a window past the input is no window.
            full_cfg.sliding_window = 1 << 20
        else:
            full_cfg.sliding_window = None
            if getattr(full_cfg, "layer_types", None):
                full_cfg.layer_types = ["full_attention"] * len(full_cfg.layer_types)
        full = AutoModelForCausalLM.from_config(full_cfg, dtype=torch.float32, attn_implementation="eager")
        full.load_state_dict(loaded.state_dict())
        full.eval()
        ref["logits_full"] = logits_of(full, ids)
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump(ref, f, separators=(",", ":"))


def build_gemma3_multimodal(tokenizer):
    """gemma3-mm: a Gemma3ForConditionalGeneration checkpoint (tiny random vision tower) whose
    language model is gemma3-f32's weights: its text logits are gemma3-f32's reference."""
    text_dir = os.path.join(base.OUT, "gemma3-f32")
    text = AutoModelForCausalLM.from_pretrained(text_dir, dtype=torch.float32)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, image_size=28, patch_size=14)
    cfg = transformers.Gemma3Config(text_config=text.config.to_dict(), vision_config=vision,
                                    mm_tokens_per_image=4, image_token_index=500,
                                    boi_token_index=498, eoi_token_index=499)
    torch.manual_seed(99)
    mm = transformers.Gemma3ForConditionalGeneration(cfg)
    missing = mm.model.language_model.load_state_dict(text.model.state_dict())
    assert not missing.missing_keys and not missing.unexpected_keys, missing
    d = os.path.join(base.OUT, "gemma3-mm-f32")
    shutil.rmtree(d, ignore_errors=True)
    mm.save_pretrained(d, safe_serialization=True)
    tokenizer.save_pretrained(d)


def main():
    tokenizer = base.make_tokenizer()
    for name, (cls, extra, n) in FAMILIES.items():
        build(name, cls, dict(extra), n, tokenizer)
    build_gemma3_multimodal(tokenizer)


if __name__ == "__main__":
    main()
