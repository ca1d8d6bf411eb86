#!/usr/bin/env python3
"""Build a tiny random-weight Qwen3 model for Qwen3's real tokenizer, and transformers'
reference embeddings (issue 19, must-show 4).

Saves a seeded random Qwen3ForCausalLM (hidden 16, 2 layers, 2 heads of 8, 1 KV head, the
real vocabulary size 151936, tied embeddings) in bfloat16 with save_pretrained under
tests/reference/qwen3-tiny/ (config.json, model.safetensors; ~5 MB) and
reference_embeddings.json: for fixed texts, the ids Qwen3's tokenizer gives and the
final-normed hidden states of Qwen3Model pooled two ways, each L2-normalised:
  last: the last token's state (Qwen3-Embedding's pooling),
  mean: the mean over every token.
The reference is computed in float32 on the bf16 weights (dtype=torch.float32), as kr-serve
computes on the CPU. The tokenizer is not copied: tests put
../shared/models/tokenizer-qwen3/{tokenizer.json,tokenizer_config.json} beside the weights.

Run (CPU; torch 2.15, transformers 5.25):
    /work/venv-tf/bin/python scripts/make_qwen3_tiny.py
"""
import json
import os

import torch
import transformers
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "reference", "qwen3-tiny")
TOKENIZER = os.path.join(ROOT, "..", "shared", "models", "tokenizer-qwen3")
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France?",
    "Embeddings map text to vectors; 同じ意味なら近い。",
    "a",
    "Rust is a systems programming language that runs blazingly fast, prevents segfaults, "
    "and guarantees thread safety. " * 3,
]


def main():
    torch.manual_seed(4321)
    cfg = transformers.Qwen3Config(
        vocab_size=151936, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, intermediate_size=48, max_position_embeddings=4096,
        rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():  # larger-than-default weights so the states are not all ~0
        for p in model.parameters():
            p.normal_(0.0, 0.2) if p.dim() > 1 else p.add_(torch.randn_like(p) * 0.1)
    model.to(torch.bfloat16).save_pretrained(OUT, safe_serialization=True)
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    base = AutoModel.from_pretrained(OUT, dtype=torch.float32).eval()
    cases = []
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        with torch.no_grad():
            h = base(torch.tensor([ids])).last_hidden_state[0]
        norm = torch.nn.functional.normalize
        cases.append({"text": text, "input_ids": ids,
                      "last": [round(float(x), 7) for x in norm(h[-1], dim=0)],
                      "mean": [round(float(x), 7) for x in norm(h.mean(0), dim=0)]})
    ref = {"torch": torch.__version__, "transformers": transformers.__version__,
           "model_class": type(base).__name__, "cases": cases}
    with open(os.path.join(OUT, "reference_embeddings.json"), "w") as f:
        json.dump(ref, f, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    main()
