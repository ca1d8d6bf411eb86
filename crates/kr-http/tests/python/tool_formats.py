"""Auto tool-call parsing of hand-written replies in one family's format, streamed and not,
through the official `openai` client: a regex (the `structured_outputs` extension) makes the
model write exactly the hand-written text, and the server must turn it into the same
`content` and `tool_calls` whole and streamed.

Usage: python tool_formats.py BASE_URL MODEL FORMAT   (hermes | llama3 | llama3-bare | mistral;
llama3-bare: the call without `<|python_tag|>`; run by tests/python_clients.rs with a chat
template in that format)
"""
import json
import sys

import openai

BASE, MODEL, FORMAT = sys.argv[1], sys.argv[2], sys.argv[3]
TOOLS = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
         for n in ("get_weather", "get_time")]
W = {"name": "get_weather", "args": {"city": "Paris", "unit": "c"}}
T = {"name": "get_time", "args": {"city": "Tokyo"}}


def hermes(calls):
    return "\n".join(f'<tool_call>\n{{"name": "{c["name"]}", "arguments": {json.dumps(c["args"])}}}\n</tool_call>'
                     for c in calls)


def render(calls):
    if FORMAT == "hermes":
        return hermes(calls)
    if FORMAT.startswith("llama3"):
        (c,) = calls
        tag = "" if FORMAT == "llama3-bare" else "<|python_tag|>"
        return f'{tag}{{"name": "{c["name"]}", "parameters": {json.dumps(c["args"])}}}'
    return "[TOOL_CALLS] " + json.dumps([{"name": c["name"], "arguments": c["args"]} for c in calls])


def regex_of(text):
    special = set("\\.+*?()|[]{}^$#&-~")
    return "".join("\\n" if ch == "\n" else ("\\" + ch if ch in special else ch) for ch in text)


CASES = [([W], ""), ([T], "")]
if not FORMAT.startswith("llama3"):
    CASES += [([W, T], ""), ([T], "Let me look that up.\n")]
CASES += [([], "No tools needed: 42.")]

c = openai.OpenAI(base_url=BASE + "/v1", api_key="unused")
for calls, lead in CASES:
    text = lead + (render(calls) if calls else "")
    kw = dict(model=MODEL, messages=[{"role": "user", "content": "Go."}], tools=TOOLS,
              max_tokens=200, temperature=0,
              extra_body={"structured_outputs": {"regex": regex_of(text)}})
    ch = c.chat.completions.create(**kw).choices[0]
    want = [(x["name"], x["args"]) for x in calls]
    got = [(t.function.name, json.loads(t.function.arguments)) for t in ch.message.tool_calls or []]
    assert got == want, (text, ch)
    assert (ch.message.content or "") == (lead.strip() if calls else text), (text, ch)
    assert ch.finish_reason == ("tool_calls" if calls else "stop"), ch
    parts, streamed, finish = "", {}, None
    for chunk in c.chat.completions.create(stream=True, **kw):
        for sc in chunk.choices:
            parts += sc.delta.content or ""
            for d in sc.delta.tool_calls or []:
                slot = streamed.setdefault(d.index, ["", ""])
                slot[0] += d.function.name or ""
                slot[1] += d.function.arguments or ""
            finish = sc.finish_reason or finish
    assert [(n, json.loads(a)) for n, a in (streamed[i] for i in sorted(streamed))] == want, streamed
    assert parts.strip() == (ch.message.content or "").strip(), (parts, ch)
    assert finish == ch.finish_reason, finish
print("ok")
