#!/usr/bin/env python3
"""Build tiny random-weight Hugging Face models and their reference logits (issue 4, must-show 2).

For each of LlamaForCausalLM (with llama3 rope scaling), Qwen2ForCausalLM (qkv bias),
Qwen3ForCausalLM (q/k norm) and MistralForCausalLM, saves a seeded random model with
save_pretrained (safetensors; mistral-f32 in shards with an index) in float32 and in
bfloat16 under
tests/reference/hf-tiny/<arch>-<dtype>/, with a tiny byte-level BPE tokenizer.json, a
tokenizer_config.json and reference.json: fixed input ids and transformers' logits at every
position. The bf16 reference is computed in float32 on the bf16 weights (the checkpoint is
loaded with dtype=torch.float32), which is what kr-serve does.

Also renders the chat templates of ../shared/models/tokenizer-{llama3,qwen3,phi-3} with
apply_chat_template for a multi-turn conversation with a system message and writes
tests/reference/hf-tiny/chat_templates.json.

Run (CPU; torch 2.15, transformers 5.23, tokenizers):
    /work/venv-ref/bin/python scripts/make_hf_tiny_models.py
"""
import json
import os
import shutil

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "reference", "hf-tiny")
SHARED = os.path.join(ROOT, "..", "shared", "models")

CORPUS = [
    "Once upon a time there was a little girl named Lily.",
    "She liked to play in the park with her dog.",
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! How are you today?",
    "Rust is a systems programming language.",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
COMMON = dict(
    vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256,
    rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2,
)
ARCHS = {
    "llama": (transformers.LlamaConfig, dict(
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 64},
        tie_word_embeddings=True)),
    "qwen2": (transformers.Qwen2Config, dict(rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                                             tie_word_embeddings=False)),
    "qwen3": (transformers.Qwen3Config, dict(head_dim=32, tie_word_embeddings=True,
                                             rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})),
    "mistral": (transformers.MistralConfig, dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                                                 tie_word_embeddings=False, sliding_window=None)),
}


def make_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500, special_tokens=["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", chat_template=CHAT_TEMPLATE)


def reference_logits(model_dir, ids):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    return [[round(float(x), 5) for x in row] for row in logits]


def build(arch, cls, extra, tokenizer, ids):
    torch.manual_seed(1234)
    cfg = cls(**COMMON, **extra)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():  # larger-than-default weights so the logits are not all ~0
        for p in model.parameters():
            p.normal_(0.0, 0.2) if p.dim() > 1 else p.add_(torch.randn_like(p) * 0.1)
    for dtype in ("f32", "bf16"):
        d = os.path.join(OUT, f"{arch}-{dtype}")
        shutil.rmtree(d, ignore_errors=True)
        m = model if dtype == "f32" else model.to(torch.bfloat16)
        # mistral-f32 is sharded, to exercise model.safetensors.index.json.
        shard = "150KB" if (arch, dtype) == ("mistral", "f32") else "50MB"
        m.save_pretrained(d, safe_serialization=True, max_shard_size=shard)
        tokenizer.save_pretrained(d)
        ref = {"arch": arch, "dtype": dtype, "torch": torch.__version__,
               "transformers": transformers.__version__, "input_ids": ids,
               "logits": reference_logits(d, ids)}
        with open(os.path.join(d, "reference.json"), "w") as f:
            json.dump(ref, f, separators=(",", ":"))


def chat_references():
    conv = [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy? Answer in one word."},
    ]
    out = {"messages": conv, "rendered": {}}
    for name in ("tokenizer-llama3", "tokenizer-qwen3", "tokenizer-phi-3"):
        tok = AutoTokenizer.from_pretrained(os.path.join(SHARED, name))
        out["rendered"][name] = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    with open(os.path.join(OUT, "chat_templates.json"), "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)


def main():
    os.makedirs(OUT, exist_ok=True)
    tokenizer = make_tokenizer()
    ids = tokenizer.encode("Once upon a time the quick brown fox said hello to Lily.")
    ids = [1] + ids[:15]
    for arch, (cls, extra) in ARCHS.items():
        build(arch, cls, extra, tokenizer, ids)
    chat_references()


if __name__ == "__main__":
    main()
