#!/usr/bin/env python3
"""Generate reference numerics for SmolLM2-135M-Instruct (Q4_1 GGUF) with Hugging Face transformers.

transformers dequantises every GGUF tensor to f32 (and un-does llama.cpp's Q/K row
permutation), then runs the plain PyTorch Llama implementation in float32 on CPU.
The output JSON is used by kr-serve's tests as ground truth for the tokenizer,
the chat template, per-position logits and greedy decoding.

Setup (outside the repo; only needed to regenerate the JSON):
    python3 -m venv /work/venv-ref
    /work/venv-ref/bin/pip install torch transformers gguf numpy sentencepiece protobuf accelerate
Run:
    /work/venv-ref/bin/python scripts/make_reference_smollm2.py \
        [--model-dir DIR] [--gguf-file NAME] [--out PATH]
"""
import argparse
import hashlib
import json
import os
import shlex
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

try:
    from importlib.metadata import version as _pkg_version
except ImportError:  # pragma: no cover
    _pkg_version = None

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

DEFAULT_MODEL_DIR = os.path.normpath(
    os.path.join(REPO, "..", "shared", "models", "smollm2-135m-instruct-q4_1"))
if not os.path.isdir(DEFAULT_MODEL_DIR):
    DEFAULT_MODEL_DIR = "/work/shared/models/smollm2-135m-instruct-q4_1"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_OUT = os.path.join(REPO, "tests", "reference", "smollm2_hf_reference.json")

CHAT_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers.",
]
RAW_PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "In 1492, Columbus sailed",
]
TOKENIZER_CASES = [
    "Hello world",
    "hello, world!",
    " leading space",
    "   three leading spaces",
    "trailing space ",
    "12345",
    "3.14159 and 1,000,000",
    "line one\nline two\n\nline four",
    "\ttab\tseparated",
    "héllo wörld 你好 🙂",
    "<|im_start|>user\nHi!<|im_end|>\n",
    "<|im_start|>assistant",
    "def f(x):\n    return x ** 2  # square",
    "The quick brown fox jumps over the lazy dog.",
    "",
]

TOPK = 20
LAST_STRIDE = 8
POS_STRIDE = 64
MAX_NEW_TOKENS = 32
DECIMALS = 5


def pkg_version(name):
    try:
        return _pkg_version(name) if _pkg_version else None
    except Exception:
        return None


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def r(x):
    return round(float(x), DECIMALS)


def logits_summary(logits, tok):
    """logits: [seq, vocab] float32 tensor."""
    seq = logits.shape[0]
    last = logits[-1]
    top = torch.topk(last, TOPK)
    mid = seq // 2
    return {
        "seq_len": seq,
        "last_position": seq - 1,
        "last_top20": [
            {"id": int(i), "logit": r(v), "token": tok.convert_ids_to_tokens(int(i))}
            for v, i in zip(top.values.tolist(), top.indices.tolist())
        ],
        "last_argmax": int(torch.argmax(last)),
        "last_strided_every": LAST_STRIDE,
        "last_strided": [r(v) for v in last[::LAST_STRIDE].tolist()],
        "positions_strided_every": POS_STRIDE,
        "positions": {
            str(p): [r(v) for v in logits[p, ::POS_STRIDE].tolist()]
            for p in sorted({0, mid})
        },
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", default=DEFAULT_MODEL_DIR)
    ap.add_argument("--gguf-file", default=DEFAULT_GGUF)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    gguf_path = os.path.join(args.model_dir, args.gguf_file)
    tok = AutoTokenizer.from_pretrained(args.model_dir, gguf_file=args.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(
        args.model_dir, gguf_file=args.gguf_file, dtype=torch.float32)
    model.eval()

    prompts = []
    for text in CHAT_PROMPTS:
        messages = [{"role": "user", "content": text}]
        rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        # The template already contains every special token; add none on top.
        ids = tok.encode(rendered, add_special_tokens=False)
        prompts.append({"kind": "chat", "messages": messages, "rendered": rendered,
                        "encode_add_special_tokens": False, "input_ids": ids})
    for text in RAW_PROMPTS:
        # Plain tokenizer call with its default add_special_tokens=True: record what it adds.
        ids = tok.encode(text)
        ids_plain = tok.encode(text, add_special_tokens=False)
        prompts.append({"kind": "raw", "text": text, "encode_add_special_tokens": True,
                        "bos_added": len(ids) > len(ids_plain) and ids[0] == tok.bos_token_id,
                        "input_ids": ids})

    for p in prompts:
        ids = torch.tensor([p["input_ids"]], dtype=torch.long)
        with torch.no_grad():
            out = model(input_ids=ids)
        p["logits"] = logits_summary(out.logits[0].float(), tok)
        with torch.no_grad():
            gen = model.generate(ids, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                                 pad_token_id=tok.eos_token_id,
                                 return_dict_in_generate=True, output_scores=True)
        new = gen.sequences[0, ids.shape[1]:].tolist()
        # top1 - top2 logit gap at each generated step: small gaps mark near-ties where
        # an implementation with different rounding may legitimately diverge.
        margins = []
        for sc in gen.scores:
            t2 = torch.topk(sc[0].float(), 2).values
            margins.append(r(t2[0] - t2[1]))
        p["greedy"] = {
            "max_new_tokens": MAX_NEW_TOKENS,
            "stopped_on_eos": bool(new and new[-1] in eos_ids(model, tok)),
            "generated_ids": new,
            "step_top1_top2_margin": margins,
            "text": tok.decode(new, skip_special_tokens=False),
            "text_skip_special": tok.decode(new, skip_special_tokens=True),
        }

    cases = []
    for text in TOKENIZER_CASES:
        ids = tok.encode(text, add_special_tokens=False)
        cases.append({"text": text, "ids": ids,
                      "tokens": tok.convert_ids_to_tokens(ids),
                      "decoded": tok.decode(ids)})

    result = {
        "description": "Reference numerics from Hugging Face transformers (float32, CPU) for "
                       "SmolLM2-135M-Instruct Q4_1 GGUF dequantised to f32 by transformers.",
        "model": {
            "gguf_file": args.gguf_file,
            "gguf_sha256": sha256_file(gguf_path),
            "gguf_bytes": os.path.getsize(gguf_path),
            "vocab_size": model.config.vocab_size,
            "num_hidden_layers": model.config.num_hidden_layers,
            "hidden_size": model.config.hidden_size,
            "num_attention_heads": model.config.num_attention_heads,
            "num_key_value_heads": model.config.num_key_value_heads,
            "rms_norm_eps": model.config.rms_norm_eps,
            "rope_parameters": getattr(model.config, "rope_parameters", None),
            "tie_word_embeddings": model.config.tie_word_embeddings,
        },
        "tokenizer": {
            "class": type(tok).__name__,
            "bos_token": tok.bos_token, "bos_token_id": tok.bos_token_id,
            "eos_token": tok.eos_token, "eos_token_id": tok.eos_token_id,
            "chat_template": tok.chat_template,
        },
        "generation_eos_ids": sorted(eos_ids(model, tok)),
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "gguf": pkg_version("gguf"),
            "tokenizers": pkg_version("tokenizers"),
            "numpy": pkg_version("numpy"),
        },
        "command": " ".join(shlex.quote(a) for a in [sys.executable] + sys.argv),
        "settings": {
            "dtype": "float32", "device": "cpu", "threads": args.threads,
            "logit_decimals": DECIMALS, "topk": TOPK,
            "last_strided": f"logits of the last position at ids 0,{LAST_STRIDE},{2*LAST_STRIDE},...",
            "positions": f"logits at positions 0 and seq_len//2 at ids 0,{POS_STRIDE},...",
            "greedy": "model.generate(do_sample=False, max_new_tokens=32); stops after emitting an EOS id",
        },
        "prompts": prompts,
        "tokenizer_cases": cases,
    }

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")
    for p in prompts:
        print(p["kind"], p["input_ids"][:4], "...", "->", repr(p["greedy"]["text"]))


def eos_ids(model, tok):
    e = model.generation_config.eos_token_id
    if e is None:
        e = tok.eos_token_id
    return set(e if isinstance(e, (list, tuple)) else [e])


if __name__ == "__main__":
    main()
