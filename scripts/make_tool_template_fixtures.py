#!/usr/bin/env python3
"""Reference renders of chat templates with tools and template variables (issue 19).

Renders ../shared/models/tokenizer-qwen3's chat template with transformers'
apply_chat_template for a conversation with a system message, a user turn, an assistant turn
that calls two tools, the two tool results and a follow-up, with a `tools` list; and the same
opening with `enable_thinking=False`. Writes tests/reference/hf-tiny/chat_templates_tools.json.

Run (no torch needed): python3 -m venv /work/venv-tf && /work/venv-tf/bin/pip install
transformers jinja2 && /work/venv-tf/bin/python scripts/make_tool_template_fixtures.py
"""
import json
import os

import transformers
from transformers import AutoTokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
MODELS = os.path.join(ROOT, "..", "shared", "models")
OUT = os.path.join(ROOT, "tests", "reference", "hf-tiny", "chat_templates_tools.json")

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "get_time", "description": "Local time in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}},
]
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Weather and time in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}},
        {"id": "call_2", "type": "function",
         "function": {"name": "get_time", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "{\"celsius\": 18}"},
    {"role": "tool", "tool_call_id": "call_2", "name": "get_time", "content": "14:05"},
    {"role": "assistant", "content": "It is 18 °C and 14:05 in Paris."},
    {"role": "user", "content": "Thanks! And in Rome?"},
]


def main():
    tok = AutoTokenizer.from_pretrained(os.path.join(MODELS, "tokenizer-qwen3"))
    out = {
        "transformers": transformers.__version__,
        "tools": TOOLS,
        "messages": MESSAGES,
        "rendered": {
            "tools": tok.apply_chat_template(MESSAGES, tools=TOOLS, tokenize=False,
                                             add_generation_prompt=True),
            "no_thinking": tok.apply_chat_template(MESSAGES[:2], tokenize=False,
                                                   add_generation_prompt=True,
                                                   enable_thinking=False),
        },
    }
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
    print(OUT)


main()
