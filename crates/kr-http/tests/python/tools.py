"""Tool calls through the official `openai` client, unmodified, against kr-serve running
SmolLM2 with Qwen3's chat template, or a tiny random Qwen3 with its own (the tool format:
<tool_call> blocks).

`tool_choice` "required" and a named function: the arguments parse and match the schema
every time, streamed and not; then a round trip (the assistant's tool_calls and the tool's
result go back in the history) gets an answer; an unknown named tool is a 400.

With Llama 3.2's template (FAMILY `llama3`: one JSON call `{"name", "parameters"}` per
reply, results in the `ipython` role) the same, without the Qwen-only reasoning part.

Usage: python tools.py BASE_URL MODEL [FAMILY]   (qwen, the default, | llama3; run by
tests/python_clients.rs)
"""
import json
import sys

import openai

BASE, MODEL = sys.argv[1], sys.argv[2]
FAMILY = sys.argv[3] if len(sys.argv) > 3 else "qwen"
TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 20},
            "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city", "unit"]}}},
    {"type": "function", "function": {
        "name": "get_time", "description": "Local time in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                       "required": ["city"]}}},
]
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


def valid(call):
    args = json.loads(call.function.arguments)
    schema = PARAMS[call.function.name]
    assert set(args) == set(schema["properties"]), args
    assert isinstance(args["city"], str) and len(args["city"]) <= 20, args
    if "unit" in args:
        assert args["unit"] in ("c", "f"), args


def streamed_calls(c, **kw):
    calls, finish = {}, None
    for chunk in c.chat.completions.create(stream=True, **kw):
        for ch in chunk.choices:
            for d in ch.delta.tool_calls or []:
                slot = calls.setdefault(d.index, {"name": "", "arguments": ""})
                slot["name"] += d.function.name or ""
                slot["arguments"] += d.function.arguments or ""
            finish = ch.finish_reason or finish
    return calls, finish


c = openai.OpenAI(base_url=BASE + "/v1", api_key="unused")
for q in ["What is the weather in Paris?", "Time in Tokyo please.", "Hi!", "Rome?"]:
    msgs = [{"role": "user", "content": q}]
    for choice in ["required", {"type": "function", "function": {"name": "get_time"}}]:
        kw = dict(model=MODEL, messages=msgs, tools=TOOLS, tool_choice=choice, max_tokens=200, temperature=0)
        r = c.chat.completions.create(**kw)
        ch = r.choices[0]
        assert ch.finish_reason == "tool_calls" and ch.message.tool_calls, ch
        for call in ch.message.tool_calls:
            valid(call)
        if isinstance(choice, dict):
            assert [t.function.name for t in ch.message.tool_calls] == ["get_time"], ch
        if FAMILY == "llama3":
            assert len(ch.message.tool_calls) == 1, ch
        calls, finish = streamed_calls(c, **kw)
        assert finish == "tool_calls", finish
        assert [(v["name"], json.loads(v["arguments"])) for _, v in sorted(calls.items())] == [
            (t.function.name, json.loads(t.function.arguments)) for t in ch.message.tool_calls], calls
# Round trip: the call and its result in the history.
msgs = [{"role": "user", "content": "Time in Tokyo please."}]
r = c.chat.completions.create(model=MODEL, messages=msgs, tools=TOOLS, tool_choice="required", max_tokens=200, temperature=0)
call = r.choices[0].message.tool_calls[0]
msgs += [r.choices[0].message.model_dump(exclude_none=True),
         {"role": "tool", "tool_call_id": call.id, "content": "09:30"}]
r = c.chat.completions.create(model=MODEL, messages=msgs, tools=TOOLS, max_tokens=30, temperature=0)
assert r.choices[0].message.content or r.choices[0].message.tool_calls, r
try:
    c.chat.completions.create(model=MODEL, messages=msgs, tools=TOOLS,
                              tool_choice={"type": "function", "function": {"name": "nope"}})
    raise AssertionError("an unknown tool was accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400 and "nope" in str(e), e
# Reasoning apart from content (Qwen3's template thinks in <think> blocks); a regex makes
# this small model write one. Streamed and whole agree.
think = {"structured_outputs": {"regex": "<think>\n[a-z]{1,10}( [a-z]{1,10}){0,3}\n</think>\n\n[A-Za-z0-9 ]{1,20}"}}
kw = dict(model=MODEL, messages=[{"role": "user", "content": "What is 2+2?"}], max_tokens=60,
          temperature=0, extra_body=think)
if FAMILY == "qwen":
    m = c.chat.completions.create(**kw).choices[0].message
    reasoning = (m.model_extra or {}).get("reasoning_content")
    assert reasoning and m.content and "think>" not in m.content + reasoning, m
    parts = {"reasoning_content": "", "content": ""}
    for chunk in c.chat.completions.create(stream=True, **kw):
        for ch in chunk.choices:
            parts["content"] += ch.delta.content or ""
            parts["reasoning_content"] += (ch.delta.model_extra or {}).get("reasoning_content") or ""
    assert parts == {"reasoning_content": reasoning, "content": m.content}, (parts, m)
# Ollama: tools in the request and tool calls and results in the history (Ollama has no
# tool_choice: what the model answers is parsed, calls or not), streamed and not.
import ollama

o = ollama.Client(host=BASE)
hist = [{"role": "user", "content": "Time in Tokyo please."},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_time", "arguments": {"city": "Tokyo"}}}]},
        {"role": "tool", "tool_name": "get_time", "content": "09:30"}]
for stream in (False, True):
    opts = {"temperature": 0, "num_predict": 40}
    r = o.chat(model=MODEL, messages=hist, tools=TOOLS, options=opts, stream=stream)
    last = list(r)[-1] if stream else r
    assert last.done, last
    for call in last.message.tool_calls or []:
        assert call.function.name in PARAMS and isinstance(call.function.arguments, dict), call
print("ok")
