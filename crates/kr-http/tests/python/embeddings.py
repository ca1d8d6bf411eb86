"""Embeddings through the official clients: openai's `client.embeddings.create` (base64 by
default, as the client asks, and float), `dimensions`, token-id input; ollama's `embed` and
`embeddings`; 400s naming the field. Vectors are checked against transformers' reference
(tests/reference/qwen3-tiny/reference_embeddings.json, last-token pooling) within 1e-4.

Usage: python embeddings.py BASE_URL MODEL REFERENCE_JSON   (run by tests/python_clients.rs
on the tiny Qwen3 model)
"""
import base64
import json
import math
import struct
import sys

import ollama
import openai

BASE, MODEL, REF = sys.argv[1], sys.argv[2], sys.argv[3]
CASES = json.load(open(REF))["cases"]
TEXTS = [c["text"] for c in CASES]
client = openai.OpenAI(base_url=BASE + "/v1", api_key="none")


def close(ours, theirs, what):
    assert len(ours) == len(theirs), (what, len(ours), len(theirs))
    err = max(abs(a - b) for a, b in zip(ours, theirs))
    assert err <= 1e-4, (what, err)


def unit(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def floats(e):
    """A vector as sent: a list, or (asked for explicitly, so the client leaves it) base64
    of little-endian f32."""
    if isinstance(e, str):
        raw = base64.b64decode(e)
        return list(struct.unpack(f"<{len(raw) // 4}f", raw))
    return e


for fmt in ("base64", "float"):
    r = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format=fmt)
    assert [d.index for d in r.data] == list(range(len(TEXTS)))
    for d, c in zip(r.data, CASES):
        assert isinstance(d.embedding, str) == (fmt == "base64")
        close(floats(d.embedding), c["last"], f"{fmt} {c['text'][:20]}")
    assert r.usage.prompt_tokens == sum(len(c["input_ids"]) for c in CASES), r.usage

# The client's default (base64), one string, token ids, dimensions.
r = client.embeddings.create(model=MODEL, input=TEXTS[0])
close(r.data[0].embedding, CASES[0]["last"], "default encoding")
r = client.embeddings.create(model=MODEL, input=CASES[1]["input_ids"])
close(r.data[0].embedding, CASES[1]["last"], "token ids")
r = client.embeddings.create(model=MODEL, input=TEXTS[0], dimensions=8)
close(r.data[0].embedding, unit(CASES[0]["last"][:8]), "dimensions")

for bad, param in (({"input": TEXTS[0], "dimensions": 17}, "dimensions"),
                   ({"input": []}, "input"),
                   ({"input": TEXTS[0], "encoding_format": "int8"}, "encoding_format")):
    try:
        client.embeddings.create(model=MODEL, **bad)
        raise AssertionError(f"accepted {bad}")
    except openai.BadRequestError as e:
        assert e.body["param"] == param, e.body

o = ollama.Client(host=BASE)
r = o.embed(model=MODEL, input=TEXTS[:2])
for v, c in zip(r["embeddings"], CASES):
    close(v, c["last"], "ollama embed")
assert r["prompt_eval_count"] == len(CASES[0]["input_ids"]) + len(CASES[1]["input_ids"])
r = o.embed(model=MODEL, input=TEXTS[2])
close(r["embeddings"][0], CASES[2]["last"], "ollama embed one")
r = o.embeddings(model=MODEL, prompt=TEXTS[3])
close(r["embedding"], CASES[3]["last"], "ollama embeddings")
print("embeddings ok")
