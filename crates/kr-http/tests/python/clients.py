"""The official `openai` and `ollama` Python clients, unmodified, against a running kr-serve.

Usage: python clients.py BASE_URL MODEL   (run by tests/python_clients.rs)
"""
import sys

import ollama
import openai

BASE, MODEL = sys.argv[1], sys.argv[2]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
PARIS = "The capital of France is Paris."


def check_openai():
    c = openai.OpenAI(base_url=BASE + "/v1", api_key="unused")
    r = c.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=20)
    assert r.choices[0].message.content == PARIS, r
    assert r.usage.completion_tokens > 0, r.usage
    parts = []
    for chunk in c.chat.completions.create(
        model=MODEL, messages=QUESTION, temperature=0, max_tokens=20, stream=True,
        stream_options={"include_usage": True},
    ):
        for ch in chunk.choices:
            parts.append(ch.delta.content or "")
    assert "".join(parts) == PARIS, parts
    r = c.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0)
    assert r.choices[0].text, r
    assert [m.id for m in c.models.list()] == [MODEL]
    try:
        c.chat.completions.create(model=MODEL, messages=QUESTION, temperature=7)
        raise AssertionError("temperature 7 was accepted")
    except openai.BadRequestError as e:
        assert e.status_code == 400 and "temperature" in str(e), e
    try:
        c.chat.completions.create(model="no-such-model", messages=QUESTION)
        raise AssertionError("unknown model was accepted")
    except openai.NotFoundError as e:
        assert e.status_code == 404, e


def check_ollama():
    c = ollama.Client(host=BASE)
    opts = {"temperature": 0, "num_predict": 20}
    r = c.chat(model=MODEL, messages=QUESTION, options=opts)
    assert r.message.content == PARIS, r
    text = "".join(p.message.content for p in c.chat(model=MODEL, messages=QUESTION, options=opts, stream=True))
    assert text == PARIS, text
    g = c.generate(model=MODEL, prompt="What is the capital of France?", options=opts)
    assert g.response == PARIS, g
    assert g.done and g.eval_count > 0, g
    names = [m.model for m in c.list().models]
    assert names == [MODEL], names
    try:
        c.chat(model="no-such-model", messages=QUESTION)
        raise AssertionError("unknown model was accepted")
    except ollama.ResponseError as e:
        assert e.status_code == 404, e


check_openai()
check_ollama()
print("python clients ok")
