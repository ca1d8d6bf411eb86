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
- gemma2-f32.gguf / gemma3-f32.gguf: arch `gemma2` / `gemma3`, norm gains already + 1,
  `post_attention_norm` / `post_ffw_norm`, soft-capping keys, `attention.sliding_window`,
  Gemma 3's linear `rope.scaling.*` and `rope.freq_base_swa`. No key carries
  query_pre_attn_scalar (llama.cpp uses head_dim, 16, not the tiny models' 24) nor
  layer_types (llama.cpp's default period 6 makes both Gemma 3 layers slide), so beside each
  file goes `<name>.llama-cpp-reference.json`: transformers' logits of the same weights
  configured as llama.cpp reads the file (see write_llama_cpp_reference). Gemma 3's
  converter cuts the embedding to the tokenizer's 390 tokens; its vocabulary is cut to match.

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
import json
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
    "phi3-longrope-f32", "phi3-partial-f32", "qwen2-yarn-f32", "mistral-window-f32", "llama-f32",
    "mixtral-f32",
    "qwen3moe-norm-f32", "gemma2-f32", "gemma3-f32",
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
            if name.startswith("gemma"):
                write_llama_cpp_reference(name)


def convert_dir(src: Path, name: str, out: Path) -> None:
    hparams = ModelBase.load_hparams(src, False)
    cls = get_model_class(get_model_architecture(hparams, ModelType.TEXT))
    # The converter's own path for a tokenizer.json-only BPE vocabulary (Qwen2 and Llama try
    # SentencePiece first and fall back to it; Phi-3 wants a tokenizer.model).
    cls.set_vocab = TextModel._set_vocab_gpt2
    with torch.inference_mode():
        model = cls(src, gguf.LlamaFileType.ALL_F32, out, eager=True, model_name=name)
        if name.startswith("gemma3"):
            # Gemma3Model cuts token_embd to the tokenizer's tokens (vocabulary plus added
            # tokens, 390 here), while _set_vocab_gpt2 pads the vocabulary to the config's
            # vocab_size (512): llama.cpp would refuse the embedding's shape. Real Gemma 3
            # tokenizers fill their vocabulary; so does this one once vocab_size is its size.
            tok = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
            model.hparams["vocab_size"] = len(tok["model"]["vocab"]) + len(tok["added_tokens"])
        model.write()


def write_llama_cpp_reference(name: str) -> None:
    """transformers' logits of the HF model configured as llama.cpp reads its GGUF file:
    query_pre_attn_scalar = head_dim (llama.cpp scales queries by head_dim^-1/2, or by
    (hidden / heads)^-1/2 for the 27B models, whatever the HF config said) and, for Gemma 3,
    the sliding layers of llama.cpp's default period 6 (no pattern key is written: layer i
    slides when i % 6 < 5) with the local base and no linear scaling on them. Gemma 3's file
    holds only the tokenizer's 390 embedding rows, so its input ids past them are folded
    into [5, 390). Also `logits_hf_config`: the unchanged HF model on the same ids."""
    import transformers

    src = HF_TINY / name
    ids = json.loads((src / "reference.json").read_text())["input_ids"]
    if name.startswith("gemma3"):
        tok = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
        rows = len(tok["model"]["vocab"]) + len(tok["added_tokens"])
        ids = [i if i < rows else 5 + i % (rows - 5) for i in ids]

    def logits(model):
        model.eval()
        with torch.no_grad():
            out = model(torch.tensor([ids])).logits[0]
        return [[round(float(x), 5) for x in row] for row in out]

    original = transformers.AutoModelForCausalLM.from_pretrained(
        src, dtype=torch.float32, attn_implementation="eager")
    cfg = transformers.AutoConfig.from_pretrained(src)
    cfg.query_pre_attn_scalar = cfg.head_dim
    if name.startswith("gemma3"):
        cfg.layer_types = [
            "sliding_attention" if i % 6 < 5 else "full_attention"
            for i in range(cfg.num_hidden_layers)
        ]
    model = transformers.AutoModelForCausalLM.from_pretrained(
        src, config=cfg, dtype=torch.float32, attn_implementation="eager")
    doc = {"arch": name, "dtype": "f32", "torch": torch.__version__,
           "transformers": transformers.__version__,
           "query_pre_attn_scalar": cfg.query_pre_attn_scalar,
           "layer_types": list(cfg.layer_types), "input_ids": ids,
           "logits": logits(model), "logits_hf_config": logits(original)}
    path = HF_TINY / f"{name}.llama-cpp-reference.json"
    path.write_text(json.dumps(doc, separators=(",", ":")))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
