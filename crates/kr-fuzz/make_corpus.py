#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (corpus/<target>/): small valid inputs the
fuzzers mutate. Rerun after changing it; the files are committed."""
import json, os, struct

HERE = os.path.dirname(os.path.abspath(__file__))

def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())

def gguf_string(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b

def gguf():
    kvs = [("general.architecture", 8, gguf_string("llama")),
           ("llama.embedding_length", 4, struct.pack("<I", 8)),
           ("llama.block_count", 4, struct.pack("<I", 1)),
           ("llama.attention.head_count", 4, struct.pack("<I", 2)),
           ("tokenizer.ggml.model", 8, gguf_string("gpt2")),
           ("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 4) + b"".join(gguf_string(t) for t in ["a", "b", "ab", "<s>"])),
           ("tokenizer.chat_template", 8, gguf_string("{% for m in messages %}{{ m.content }}{% endfor %}"))]
    head = b"GGUF" + struct.pack("<IQQ", 3, 1, len(kvs))
    for k, ty, v in kvs:
        head += gguf_string(k) + struct.pack("<I", ty) + v
    head += gguf_string("token_embd.weight") + struct.pack("<I", 2) + struct.pack("<QQ", 8, 4) + struct.pack("<IQ", 0, 0)
    head += b"\0" * (-len(head) % 32)
    put("gguf", "tiny.gguf", head + struct.pack("<32f", *range(32)))

def safetensors():
    header = json.dumps({"model.embed_tokens.weight": {"dtype": "F32", "shape": [16, 8], "data_offsets": [0, 512]}}).encode()
    header += b" " * (-len(header) % 8)
    put("safetensors", "embed.safetensors", struct.pack("<Q", len(header)) + header + struct.pack("<128f", *range(128)))

def llama2c():
    dim, hidden, layers, heads, kv, vocab, seq = 8, 16, 1, 2, 1, 16, 8
    head = struct.pack("<7i", dim, hidden, layers, heads, kv, vocab, seq)
    hd = dim // heads
    n = vocab * dim + layers * (dim + dim * dim + 2 * dim * kv * hd + dim * dim + dim + 3 * dim * hidden) + dim + seq * hd
    put("llama2c", "tiny.bin", head + struct.pack(f"<{n}f", *([0.01] * n)))
    tok = struct.pack("<i", 4) + b"".join(struct.pack("<fi", float(i), 1) + bytes([97 + i]) for i in range(16))
    put("llama2c", "tok16.bin", tok)

def tokenizer_json():
    t = {"version": "1.0", "added_tokens": [], "normalizer": None, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
         "post_processor": None, "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
         "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                   "vocab": {"H": 0, "e": 1, "l": 2, "o": 3, "He": 4, "ll": 5, "Hell": 6}, "merges": ["H e", "l l", "He ll"]}}
    put("tokenizer_json", "bpe.json", json.dumps(t))

def chat_template():
    chatml = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    put("chat_template", "chatml", chatml + "\0What is the capital of France?")
    llama = "{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}[INST] {{ m.content|trim }} [/INST]{% else %}{{ m.content }}{{ eos_token }}{% endif %}{% endfor %}"
    put("chat_template", "inst", llama + "\0hello")
    put("chat_template", "namespace", "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}{{ messages|tojson }}\0x")

def http():
    bodies = [(0, {"model": "stories260K", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}),
              (1, {"model": "stories260K", "prompt": "Once upon", "max_tokens": 2, "logprobs": 2, "echo": True}),
              (2, {"model": "stories260K", "prompt": "Once", "stream": False, "options": {"num_predict": 2}}),
              (3, {"model": "stories260K", "messages": [{"role": "user", "content": "hi"}], "stream": False}),
              (4, {"model": "stories260K", "prompt": "Once upon a time"}),
              (5, {"model": "stories260K", "tokens": [1, 2, 3]})]
    for route, body in bodies:
        put("http", f"route{route}.json", bytes([route]) + json.dumps(body).encode())

for f in (gguf, safetensors, llama2c, tokenizer_json, chat_template, http):
    f()
