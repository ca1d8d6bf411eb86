//! Tool calling: the request's `tools` checked, the format the model's chat template asks
//! for recognised, the model's output parsed into OpenAI `tool_calls`, and `tool_choice`
//! `required` or a named function turned into a grammar so the call always parses.
//!
//! Formats (what each family's template tells the model to write):
//! - Hermes (Qwen2.5, Qwen3, Hermes): `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`,
//!   one block per call;
//! - Llama 3.1+: a JSON object `{"name": …, "parameters": {…}}` as the whole reply, after an
//!   optional `<|python_tag|>`;
//! - Mistral: `[TOOL_CALLS]` then a JSON list of `{"name": …, "arguments": {…}}`.
//!
//! Invariant: a parsed call's `arguments` is a JSON object serialised as a string (OpenAI's
//! wire form); text that does not parse stays content.

use crate::error::{ApiError, Result};
use kr_engine::{Constraint, ConstraintKind};
use serde_json::{json, Value};

/// How a model writes its tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    Hermes,
    Llama3Json,
    Mistral,
}

impl ToolFormat {
    /// The format a chat template teaches, from its source; `None` if it knows no tools.
    pub fn detect(template: &str) -> Option<Self> {
        if template.contains("<tool_call>") {
            Some(Self::Hermes)
        } else if template.contains("[TOOL_CALLS]") {
            Some(Self::Mistral)
        } else if template.contains("<|python_tag|>") || template.contains("\"parameters\": ") {
            Some(Self::Llama3Json)
        } else {
            None
        }
    }

    /// Where in `text` a call may begin (text before it is content): a Hermes or Mistral
    /// marker, whole or begun at the very end; for Llama 3.1 (whose call is the whole reply)
    /// and Mistral (whose `[TOOL_CALLS]` token may not reach the text), `text` itself when
    /// it is the start of the reply (`at_start`) and opens like a call.
    pub fn call_start(self, text: &str, at_start: bool) -> Option<usize> {
        let t = text.trim_start();
        let opens = |openers: &[&str]| {
            t.is_empty() || openers.iter().any(|o| t.starts_with(o) || o.starts_with(t))
        };
        match self {
            Self::Llama3Json => (at_start && opens(&["<|python_tag|>", "{", "["])).then_some(0),
            Self::Mistral if at_start && opens(&["[TOOL_CALLS]", "["]) => Some(0),
            Self::Mistral => marker_start(text, "[TOOL_CALLS]"),
            Self::Hermes => marker_start(text, "<tool_call>"),
        }
    }
}

/// The first `marker` in `text`, or where it begins at the very end.
fn marker_start(text: &str, marker: &str) -> Option<usize> {
    text.find(marker).or_else(|| {
        (1..marker.len())
            .rev()
            .find(|&k| text.ends_with(&marker[..k]))
            .map(|k| text.len() - k)
    })
}

/// A streamed reply's text, holding back from where a tool call may begin; text that turns
/// out not to be a call is let go as soon as that is clear.
#[derive(Debug, Clone, Default)]
pub struct CallHold {
    held: String,
    sent: bool,
}

impl CallHold {
    /// Takes the next text; returns what can be sent as content now.
    pub fn push(&mut self, format: ToolFormat, text: &str) -> String {
        self.held.push_str(text);
        let cut = format
            .call_start(&self.held, !self.sent)
            .unwrap_or(self.held.len());
        let out: String = self.held.drain(..cut).collect();
        self.sent |= !out.trim().is_empty();
        out
    }

    /// The end of the reply: what is still held (a call, or text to send).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// One call parsed from the output.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub name: String,
    /// A JSON object, serialised.
    pub arguments: String,
}

/// A call object `{"name", "arguments"|"parameters"}` with an object of arguments.
fn call_of(v: &Value) -> Option<ToolCall> {
    let name = v.get("name")?.as_str()?.to_string();
    let args = v.get("arguments").or_else(|| v.get("parameters"))?;
    let args = match args {
        Value::String(s) => serde_json::from_str::<Value>(s).ok()?,
        other => other.clone(),
    };
    args.is_object().then(|| ToolCall {
        name,
        arguments: args.to_string(),
    })
}

/// Splits `text` into content and the tool calls written in `format`. Nothing is taken as a
/// call unless it parses whole.
pub fn parse(format: ToolFormat, text: &str) -> (String, Vec<ToolCall>) {
    let found = match format {
        ToolFormat::Hermes => parse_hermes(text),
        ToolFormat::Mistral => parse_mistral(text),
        ToolFormat::Llama3Json => parse_llama3(text),
    };
    found.unwrap_or_else(|| (text.to_string(), Vec::new()))
}

/// `<tool_call>{…}</tool_call>` blocks, nothing but whitespace after the first.
fn parse_hermes(text: &str) -> Option<(String, Vec<ToolCall>)> {
    let start = text.find("<tool_call>")?;
    let mut calls = Vec::new();
    let mut rest = &text[start..];
    while let Some(body) = rest.strip_prefix("<tool_call>") {
        let end = body.find("</tool_call>")?;
        calls.push(call_of(&serde_json::from_str(body[..end].trim()).ok()?)?);
        rest = body[end + "</tool_call>".len()..].trim_start();
    }
    rest.trim()
        .is_empty()
        .then(|| (text[..start].trim_end().to_string(), calls))
}

/// `[TOOL_CALLS]` and a JSON list of calls, or the list alone as the whole reply (the marker
/// is a control token, which decoding drops).
fn parse_mistral(text: &str) -> Option<(String, Vec<ToolCall>)> {
    let (start, list) = match text.find("[TOOL_CALLS]") {
        Some(s) => (s, text[s + "[TOOL_CALLS]".len()..].trim()),
        None => (0, text.trim()),
    };
    let Value::Array(items) = serde_json::from_str::<Value>(list).ok()? else {
        return None;
    };
    let calls = items.iter().map(call_of).collect::<Option<Vec<_>>>()?;
    (!calls.is_empty()).then(|| (text[..start].trim_end().to_string(), calls))
}

/// The whole reply one call object (or a list), after an optional `<|python_tag|>`.
fn parse_llama3(text: &str) -> Option<(String, Vec<ToolCall>)> {
    let body = text
        .trim_start()
        .trim_start_matches("<|python_tag|>")
        .trim();
    let mut calls = Vec::new();
    for value in json_values_by_semicolons(body)? {
        match value {
            Value::Array(items) => {
                calls.extend(items.iter().map(call_of).collect::<Option<Vec<_>>>()?)
            }
            obj => calls.push(call_of(&obj)?),
        }
    }
    (!calls.is_empty()).then(|| (String::new(), calls))
}

/// One JSON value, or several separated by `;` (Llama's way of writing several calls, as
/// vLLM's parser reads it); a `;` inside a string is part of the string.
fn json_values_by_semicolons(body: &str) -> Option<Vec<Value>> {
    let mut values = Vec::new();
    let mut rest = body;
    loop {
        let mut it = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        values.push(it.next()?.ok()?);
        rest = rest[it.byte_offset()..].trim_start();
        match rest.strip_prefix(';') {
            None if rest.is_empty() => return Some(values),
            None => return None,
            Some(after) if after.trim().is_empty() => return Some(values),
            Some(after) => rest = after.trim_start(),
        }
    }
}

/// The tool format of a model's chat template (its source, if it has one), or the 400 for a
/// request with tools to a model whose template knows none.
pub fn template_format(template: Option<&str>) -> Result<ToolFormat> {
    template
        .and_then(ToolFormat::detect)
        .ok_or_else(|| ApiError::bad("tools", "this model's chat template does not support tools"))
}

/// The request's `tools`, checked: each `{"type": "function", "function": {"name", …}}`.
/// Returns the function definitions (name, parameters schema).
pub fn check_tools(tools: &[Value]) -> Result<Vec<(String, Value)>> {
    tools
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let bad =
                |what: &str| ApiError::bad(format!("tools[{i}]"), format!("tools[{i}] {what}"));
            if t.get("type").and_then(Value::as_str) != Some("function") {
                return Err(bad("must have `type: \"function\"`"));
            }
            let f = t
                .get("function")
                .ok_or_else(|| bad("needs a `function` object"))?;
            let name = f
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .ok_or_else(|| bad("needs `function.name`"))?;
            let params = f
                .get("parameters")
                .cloned()
                .unwrap_or_else(|| json!({"type": "object"}));
            if !params.is_object() {
                return Err(bad("`function.parameters` must be a JSON schema object"));
            }
            Ok((name.to_string(), params))
        })
        .collect()
}

/// The grammar for `tool_choice` `required` (any of `funcs`; when `parallel`, up to one call
/// per function) or a named function (just that one): calls in `format`, arguments held to
/// each function's parameters schema.
pub fn forced_calls(format: ToolFormat, funcs: &[(String, Value)], parallel: bool) -> Constraint {
    let key = match format {
        ToolFormat::Llama3Json => "parameters",
        _ => "arguments",
    };
    let one_of: Vec<Value> = funcs
        .iter()
        .map(|(name, params)| {
            json!({"type": "object", "properties": {"name": {"const": name}, key: params},
                   "required": ["name", key], "additionalProperties": false})
        })
        .collect();
    let call = kr_engine::grammar::with_schema_defaults(&json!({"anyOf": one_of}));
    // Parallel calls: up to one per tool (at most 4), as nested optionals, so a model that
    // would repeat calls forever still ends.
    let extra = if parallel {
        funcs.len().clamp(1, 4) - 1
    } else {
        0
    };
    let more = |sep: &str, item: &str| {
        (0..extra).fold(String::new(), |inner, _| {
            format!("({sep:?} {item} {inner})?")
        })
    };
    let lark = match format {
        ToolFormat::Hermes => format!(
            "start: block {}\nblock: \"<tool_call>\\n\" call \"\\n</tool_call>\"",
            more("\n", "block")
        ),
        // The list alone: `[TOOL_CALLS]` is a control token, which a grammar cannot write.
        ToolFormat::Mistral => format!("start: \"[\" call {} \"]\"", more(", ", "call")),
        ToolFormat::Llama3Json => "start: call".to_string(),
    };
    let lark = format!("{lark}\ncall: %json {call}");
    Constraint::new("tool_choice", ConstraintKind::Lark(lark))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_family_and_leaves_other_text_alone() {
        let (content, calls) = parse(
            ToolFormat::Hermes,
            "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>",
        );
        assert_eq!(content, "Let me check.");
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].name, "get_weather");
        assert_eq!(calls[0].arguments, r#"{"city":"Paris"}"#);
        let (_, calls) = parse(
            ToolFormat::Llama3Json,
            "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Rome\"}}",
        );
        assert_eq!(
            calls,
            vec![ToolCall {
                name: "get_weather".into(),
                arguments: r#"{"city":"Rome"}"#.into()
            }]
        );
        let (content, calls) = parse(
            ToolFormat::Mistral,
            "[TOOL_CALLS] [{\"name\": \"a\", \"arguments\": {\"x\": 1}}, {\"name\": \"b\", \"arguments\": \"{\\\"y\\\": 2}\"}]",
        );
        assert_eq!((content.as_str(), calls.len()), ("", 2));
        assert_eq!(calls[1].arguments, r#"{"y":2}"#);
        // Not calls: plain text, a broken block, JSON that is not a call.
        for (f, text) in [
            (ToolFormat::Hermes, "The weather is fine."),
            (
                ToolFormat::Hermes,
                "<tool_call>\n{\"name\": \"x\", \"arguments\": {\n</tool_call>",
            ),
            (ToolFormat::Llama3Json, "{\"answer\": 42}"),
            (ToolFormat::Mistral, "[TOOL_CALLS] nothing"),
        ] {
            let (content, calls) = parse(f, text);
            assert!(calls.is_empty() && content == text, "{f:?} {text}");
        }
    }

    #[test]
    fn call_starts_are_found_whole_or_begun() {
        let hermes = ToolFormat::Hermes;
        assert_eq!(hermes.call_start("Sure.\n<tool_call>\n{", true), Some(6));
        assert_eq!(hermes.call_start("Sure.\n<tool_", true), Some(6));
        assert_eq!(hermes.call_start("Sure.", true), None);
        let llama = ToolFormat::Llama3Json;
        assert_eq!(llama.call_start("<|python_tag|>{\"name\"", true), Some(0));
        assert_eq!(llama.call_start(" <|pyth", true), Some(0));
        assert_eq!(llama.call_start("x {", true), None);
        assert_eq!(llama.call_start("{", false), None);
        assert_eq!(
            ToolFormat::Mistral.call_start("a [TOOL_CALLS] [", false),
            Some(2)
        );
        assert_eq!(ToolFormat::Mistral.call_start("[{\"na", true), Some(0));
    }

    /// Streamed text is let go as soon as it cannot be a call, and whole and streamed agree
    /// on what the calls are, however the reply is cut.
    #[test]
    fn held_text_is_let_go_once_it_is_not_a_call() {
        let stream = |f: ToolFormat, pieces: &[&str]| {
            let mut h = CallHold::default();
            let sent: Vec<String> = pieces.iter().map(|p| h.push(f, p)).collect();
            (sent, h.finish())
        };
        let (sent, rest) = stream(ToolFormat::Hermes, &["if a <", "b then", " c"]);
        assert_eq!(
            (sent.concat(), rest.as_str()),
            ("if a <b then c".into(), "")
        );
        assert_eq!(
            sent[1], "<b then",
            "released as soon as `<b` is not a marker"
        );
        let (sent, rest) = stream(ToolFormat::Llama3Json, &["Sure: ", "{\"a\": 1}"]);
        assert_eq!(
            (sent.concat(), rest.as_str()),
            ("Sure: {\"a\": 1}".into(), "")
        );
        let reply =
            "[{\"name\": \"a\", \"parameters\": {}}, {\"name\": \"b\", \"parameters\": {}}]";
        for cut in 1..reply.len() {
            let (sent, rest) = stream(ToolFormat::Llama3Json, &[&reply[..cut], &reply[cut..]]);
            assert_eq!(sent.concat(), "", "cut {cut}");
            assert_eq!(
                parse(ToolFormat::Llama3Json, &rest),
                parse(ToolFormat::Llama3Json, reply)
            );
        }
        assert_eq!(parse(ToolFormat::Llama3Json, reply).1.len(), 2);
        let bare = "[{\"name\": \"a\", \"arguments\": {\"x\": 1}}]";
        assert_eq!(parse(ToolFormat::Mistral, bare).1.len(), 1);
        assert_eq!(stream(ToolFormat::Mistral, &[bare]).1, bare);
    }

    /// Replies written by hand in the format Llama 3.1's and 3.2's templates teach (see
    /// tests/reference/llama3_2-template: `{"name": function name, "parameters": dictionary of
    /// argument name and its value}`, the whole reply, after an optional `<|python_tag|>`)
    /// give the same content and calls whole and streamed, however the reply is cut; text that
    /// is not exactly one such call (prose, a call with text around it, a cut-off call, JSON
    /// that is not a call) stays content, whole and streamed.
    #[test]
    fn llama3_replies_parse_the_same_whole_and_streamed() {
        let f = ToolFormat::Llama3Json;
        let cfg = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/reference/llama3_2-template/tokenizer_config.json");
        let cfg: Value = serde_json::from_str(&std::fs::read_to_string(cfg).unwrap()).unwrap();
        assert_eq!(
            ToolFormat::detect(cfg["chat_template"].as_str().unwrap()),
            Some(f),
            "Llama 3.2's template is detected as this format"
        );
        let calls = [
            (
                r#"{"name": "get_weather", "parameters": {"city": "Paris"}}"#,
                "get_weather",
                json!({"city": "Paris"}),
            ),
            (
                r#"<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "unit": "c"}}"#,
                "get_weather",
                json!({"city": "Paris", "unit": "c"}),
            ),
            (
                "\n\n {\"name\": \"get_time\", \"parameters\": {}}\n",
                "get_time",
                json!({}),
            ),
            (
                r#"{"name": "search", "parameters": {"query": "café; crème", "filters": {"lang": ["fr", "en"]}, "limit": 3}}"#,
                "search",
                json!({"query": "café; crème", "filters": {"lang": ["fr", "en"]}, "limit": 3}),
            ),
            (
                r#"{"name": "get_time", "parameters": "{\"city\": \"Tokyo\"}"}"#,
                "get_time",
                json!({"city": "Tokyo"}),
            ),
        ];
        let not_calls = [
            "The weather in Paris is sunny, 18 °C.",
            "  Hello!",
            r#"Sure: {"name": "get_weather", "parameters": {"city": "Paris"}}"#,
            r#"{"name": "get_weather", "parameters": {"city": "Paris"}} Anything else?"#,
            r#"{"name": "get_weather", "parameters": {"city": "Par"#,
            r#"{"name": "get_weather"}"#,
            r#"{"name": "get_weather", "parameters": "Paris"}"#,
            r#"{"answer": 42}"#,
            "[1, 2, 3]",
            "{}",
            "<|python_tag|>print(\"hi\")",
            r#"{"name": "get_time", "parameters": {}}; and then some text"#,
        ];
        // Whole, then streamed: cut once anywhere, and one character at a time. Streamed
        // content is what was let go plus the content of what was held at the end.
        let streamed = |pieces: &[&str]| {
            let mut h = CallHold::default();
            let sent: String = pieces.iter().map(|p| h.push(f, p)).collect();
            let (rest, calls) = parse(f, &h.finish());
            (sent + &rest, calls)
        };
        let check = |text: &str, whole: (String, Vec<ToolCall>)| {
            let cuts: Vec<usize> = text.char_indices().map(|(i, _)| i).skip(1).collect();
            for &cut in &cuts {
                assert_eq!(
                    streamed(&[&text[..cut], &text[cut..]]),
                    whole,
                    "{text:?} cut at {cut}"
                );
            }
            let chars: Vec<String> = text.chars().map(String::from).collect();
            let chars: Vec<&str> = chars.iter().map(String::as_str).collect();
            assert_eq!(streamed(&chars), whole, "{text:?} char by char");
        };
        let two = r#"{"name": "get_weather", "parameters": {"city": "Paris; FR"}}; {"name": "get_time", "parameters": {"city": "Paris"}}"#;
        let (content, got) = parse(f, two);
        assert_eq!(content, "");
        let names: Vec<&str> = got.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["get_weather", "get_time"], "calls separated by ;");
        assert_eq!(got[0].arguments, r#"{"city":"Paris; FR"}"#);
        check(two, (content, got));
        for (text, name, args) in calls {
            let (content, got) = parse(f, text);
            assert_eq!(content, "", "{text:?}");
            assert_eq!(got.len(), 1, "{text:?}");
            assert_eq!(got[0].name, name);
            let parsed: Value = serde_json::from_str(&got[0].arguments).unwrap();
            assert_eq!(parsed, args, "{text:?}");
            check(text, (content, got));
        }
        for text in not_calls {
            let whole = parse(f, text);
            assert_eq!(whole, (text.to_string(), Vec::new()), "{text:?}");
            check(text, whole);
        }
    }

    #[test]
    fn detects_formats_and_checks_tools() {
        assert_eq!(
            ToolFormat::detect("... <tool_call> ..."),
            Some(ToolFormat::Hermes)
        );
        assert_eq!(
            ToolFormat::detect("{{ '[TOOL_CALLS]' }}"),
            Some(ToolFormat::Mistral)
        );
        assert_eq!(
            ToolFormat::detect("<|python_tag|>"),
            Some(ToolFormat::Llama3Json)
        );
        assert_eq!(ToolFormat::detect("{{ messages }}"), None);
        let ok = json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
        assert_eq!(check_tools(ok.as_array().unwrap()).unwrap()[0].0, "f");
        let bad = json!([{"type": "function", "function": {"description": "no name"}}]);
        let e = check_tools(bad.as_array().unwrap()).unwrap_err();
        assert!(e.to_string().contains("tools[0]"), "{e}");
    }
}
