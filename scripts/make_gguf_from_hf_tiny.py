#!/usr/bin/env python3
"""GGUF files of the same weights as the tiny Hugging Face models of
scripts/make_hf_tiny_families.py, written by llama.cpp's own converter (its model classes, so
the architecture name, metadata keys, tensor names, fused tensors and Q/K permutation are
llama.cpp's), as f32:

- phi3-longrope-f32.gguf: arch `phi3`; fused `blk.N.attn_qkv.weight`, `blk.N.ffn_up.weight`
  holding gate then up, `rope_factors_long.weight` / `rope_factors_short.weight`,
  `phi3.rope.scaling.original_context_length`, `phi3.rope.scaling.attn_factor`,
  `phi3.attention.sliding_window` = 0 (none);
- qwen2-yarn-f32.gguf: arch `qwen2`; `qwen2.rope.scaling.type` = "yarn",
  `rope.scaling.factor`, `rope.scaling.original_context_length` (no yarn_* keys: the HF
  config sets none of extrapolation_factor / attention_factor / beta_fast / beta_slow);
- mistral-window-f32.gguf: MistralForCausalLM becomes arch `llama` with Q/K permuted for
  interleaved rotation, and llama.cpp's converter writes no sliding window for it (nor for
  Qwen2 / Qwen3): this file holds the weights of mistral-window-f32 without its window;
- llama-f32.gguf: Llama 3.1 rope scaling as `rope_freqs.weight`;
- Mixture-of-Experts: the router `blk.N.ffn_gate_inp.weight` and the experts stacked into
  `blk.N.ffn_gate_exps` / `ffn_up_exps` / `ffn_down_exps.weight` (GGUF dims [cols, rows,
  experts]), `<arch>.expert_count`, `<arch>.expert_used_count`:
  - mixtral-f32.gguf: MixtralForCausalLM becomes arch `llama` with experts (Q/K permuted);
  - qwen3moe-norm-f32.gguf: arch `qwen3moe`, with `qwen3moe.expert_feed_forward_length`.
    The converter cannot write qwen3moe-f32 (its dense layer 1, mlp_only_layers: "Can not
    map tensor 'model.layers.1.mlp.down_proj.weight'"; llama.cpp's qwen3moe also wants
    experts on every layer), and llama.cpp's qwen3moe always renormalises the chosen
    experts' probabilities (no key says otherwise), so qwen3moe-norm-f32 is the tiny
    Qwen3-MoE with every layer sparse and norm_topk_prob true.

Written beside the HF directories: tests/reference/hf-tiny/<name>-f32.gguf.

The tiny models' tokenizer (byte-level BPE with GPT-2's split regex) is unknown to the
converter's pre-tokenizer hash table, so `get_vocab_base_pre` is pinned to "gpt-2", and every
model writes its vocabulary the way the converter does for a tokenizer.json-only BPE
vocabulary (`_set_vocab_gpt2`: tokens padded with [PADn] to the model's vocab size, merges,
BOS/EOS ids; Qwen2 and Llama reach it after looking for a SentencePiece tokenizer.model,
Phi3MiniModel wants one). Nothing else is changed.

Run (CPU; torch 2.15, transformers 5.25, llama.cpp's convert_hf_to_gguf package `conversion`
and gguf-py 0.19.0 from a llama.cpp source tree at $LLAMA_CPP, default /tmp/lc/lc):
    /work/venv-tf/bin/python scripts/make_gguf_from_hf_tiny.py
"""
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

LLAMA_CPP = Path(os.environ.get("LLAMA_CPP", "/tmp/lc/lc"))
sys.path.insert(0, str(LLAMA_CPP / "gguf-py"))
sys.path.insert(0, str(LLAMA_CPP))

import gguf  # noqa: E402
import torch  # noqa: E402
from conversion import ModelBase, get_model_architecture, get_model_class  # noqa: E402
from conversion.base import ModelType, TextModel  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HF_TINY = ROOT / "tests" / "reference" / "hf-tiny"
NAMES = [
    "phi3-longrope-f32", "qwen2-yarn-f32", "mistral-window-f32", "llama-f32", "mixtral-f32",
    "qwen3moe-norm-f32",
]


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
    with tempfile.TemporaryDirectory() as tmp:
        for name in NAMES:
            out = Path(tmp) / f"{name}.gguf"
            convert_dir(HF_TINY / name, name, out)
            shutil.copyfile(out, HF_TINY / f"{name}.gguf")
            print(f"wrote {HF_TINY / f'{name}.gguf'} ({out.stat().st_size} bytes)")


def convert_dir(src: Path, name: str, out: Path) -> None:
    hparams = ModelBase.load_hparams(src, False)
    cls = get_model_class(get_model_architecture(hparams, ModelType.TEXT))
    # The converter's own path for a tokenizer.json-only BPE vocabulary (Qwen2 and Llama try
    # SentencePiece first and fall back to it; Phi-3 wants a tokenizer.model).
    cls.set_vocab = TextModel._set_vocab_gpt2
    with torch.inference_mode():
        model = cls(src, gguf.LlamaFileType.ALL_F32, out, eager=True, model_name=name)
        model.write()


if __name__ == "__main__":
    main()
