//! POST /v1/chat/completions: messages through the chat template; streamed as SSE chunks
//! (`chat.completion.chunk`, then an optional usage chunk, then `data: [DONE]`) or answered
//! as one `chat.completion`.

use super::{check_request, new_id, openai_request, usage_json};
use crate::error::{ApiError, Result};
use crate::extract::{check_keys, check_unknown_in, ApiJson};
use crate::generate::{self, FieldNames, Job, TokenOut};
use crate::reasoning;
use crate::state::{unix_now, AppState, Server};
use crate::stream::{event_response, sse, Encoder};
use crate::tools::{self, ToolCall, ToolFormat};
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use kr_engine::{ChatContext, ChatMessage, FinishReason, Prompt, RequestOptions, Usage};
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Instant;

openai_request! {
    pub struct ChatRequest {
        pub model: String,
        pub messages: Vec<MessageIn>,
        pub max_tokens: Option<u32>,
        pub max_completion_tokens: Option<u32>,
        pub logprobs: Option<bool>,
        pub top_logprobs: Option<u32>,
        pub tools: Option<Vec<Value>>,
        pub tool_choice: Option<Value>,
        pub parallel_tool_calls: Option<bool>,
        pub chat_template_kwargs: Option<serde_json::Map<String, Value>>,
    }
}

#[derive(Debug, Deserialize)]
pub struct MessageIn {
    pub role: String,
    #[serde(default)]
    pub content: Option<ContentIn>,
    #[serde(default)]
    pub tool_calls: Option<Vec<Value>>,
    #[serde(default)]
    pub tool_call_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ContentIn {
    Text(String),
    Parts(Vec<PartIn>),
}

#[derive(Debug, Deserialize)]
pub struct PartIn {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

impl MessageIn {
    /// The message's text: its string content or its text parts joined.
    pub fn text(&self) -> String {
        match &self.content {
            None => String::new(),
            Some(ContentIn::Text(t)) => t.clone(),
            Some(ContentIn::Parts(parts)) => {
                parts.iter().filter_map(|p| p.text.as_deref()).collect()
            }
        }
    }
}

fn to_messages(msgs: &[MessageIn]) -> Result<Vec<ChatMessage>> {
    generate::check_message_count(msgs.len())?;
    msgs.iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "developer" => "system",
                r @ ("system" | "user" | "assistant" | "tool") => r,
                other => {
                    return Err(ApiError::bad(
                        format!("messages[{i}].role"),
                        format!(
                        "unknown role `{other}`: allowed system, developer, user, assistant, tool"
                    ),
                    ))
                }
            };
            let content = match &m.content {
                None => String::new(),
                Some(ContentIn::Text(t)) => t.clone(),
                Some(ContentIn::Parts(parts)) => {
                    let mut s = String::new();
                    for p in parts {
                        match (p.kind.as_str(), &p.text) {
                            ("text", Some(t)) => s.push_str(t),
                            (kind, _) => {
                                return Err(ApiError::bad(
                                    format!("messages[{i}].content"),
                                    format!(
                                        "content part of type `{kind}` is not supported; only text"
                                    ),
                                ))
                            }
                        }
                    }
                    s
                }
            };
            let mut msg = ChatMessage::new(role, &content);
            msg.tool_calls = m.tool_calls.as_ref().map(|c| template_tool_calls(c));
            msg.tool_call_id = m.tool_call_id.clone();
            msg.name = m.name.clone();
            Ok(msg)
        })
        .collect()
}

/// `--strict`: unknown fields inside messages, content parts, tools and `response_format`.
fn check_nested(state: &AppState, req: &ChatRequest) -> Result<()> {
    for (i, m) in req.messages.iter().enumerate() {
        check_unknown_in(state, &format!("messages[{i}]"), &m.extra)?;
        if let Some(ContentIn::Parts(parts)) = &m.content {
            for (j, p) in parts.iter().enumerate() {
                check_unknown_in(state, &format!("messages[{i}].content[{j}]"), &p.extra)?;
            }
        }
    }
    for (i, t) in req.tools.iter().flatten().enumerate() {
        check_keys(state, &format!("tools[{i}]"), t, &["type", "function"])?;
        let f = t.get("function").unwrap_or(&Value::Null);
        let allowed = ["name", "description", "parameters", "strict"];
        check_keys(state, &format!("tools[{i}].function"), f, &allowed)?;
    }
    if let Some(rf) = &req.response_format {
        check_keys(state, "response_format", rf, &["type", "json_schema"])?;
        let js = rf.get("json_schema").unwrap_or(&Value::Null);
        let allowed = ["name", "description", "schema", "strict"];
        check_keys(state, "response_format.json_schema", js, &allowed)?;
    }
    Ok(())
}

/// An assistant's `tool_calls` as templates read them: `function.arguments` as an object
/// (OpenAI sends a JSON string), as transformers' callers pass them.
fn template_tool_calls(calls: &[Value]) -> Value {
    calls
        .iter()
        .map(|c| {
            let mut c = c.clone();
            if let Some(args) = c.pointer_mut("/function/arguments") {
                if let Some(parsed) = args
                    .as_str()
                    .and_then(|s| serde_json::from_str::<Value>(s).ok())
                {
                    *args = parsed;
                }
            }
            c
        })
        .collect()
}

/// What a request's tools change: the template's context, the format to parse the reply in
/// (`None`: no tools), and the grammar that forces a call (`required` or a named function).
struct ToolSetup {
    ctx: ChatContext,
    format: Option<ToolFormat>,
    forced: Option<kr_engine::Constraint>,
}

fn tool_setup(state: &AppState, req: &ChatRequest) -> Result<ToolSetup> {
    let ctx = ChatContext {
        tools: None,
        kwargs: req.chat_template_kwargs.clone().unwrap_or_default(),
    };
    let tools = req.tools.as_deref().unwrap_or_default();
    let choice = req.tool_choice.as_ref();
    if tools.is_empty() || choice.and_then(Value::as_str) == Some("none") {
        return Ok(ToolSetup {
            ctx,
            format: None,
            forced: None,
        });
    }
    let funcs = tools::check_tools(tools)?;
    let format = tools::template_format(state.engine.chat_template_source())?;
    let parallel = req.parallel_tool_calls.unwrap_or(true);
    let forced = match choice {
        None => None,
        Some(Value::String(s)) if s == "auto" => None,
        Some(Value::String(s)) if s == "required" => {
            Some(tools::forced_calls(format, &funcs, parallel))
        }
        Some(v) => {
            let name = v.pointer("/function/name").and_then(Value::as_str).ok_or_else(|| {
                ApiError::bad("tool_choice", "allowed \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": …}}")
            })?;
            let f = funcs.iter().find(|(n, _)| n == name).ok_or_else(|| {
                ApiError::bad(
                    "tool_choice",
                    format!("tool_choice names `{name}`, which is not in `tools`"),
                )
            })?;
            Some(tools::forced_calls(format, std::slice::from_ref(f), false))
        }
    };
    Ok(ToolSetup {
        ctx: ChatContext {
            tools: Some(Value::Array(tools.to_vec())),
            ..ctx
        },
        format: Some(format),
        forced,
    })
}

/// For a template whose models think in `<think>` blocks: whether the prompt already opened
/// one (`Some(opened)`); `None` for other templates.
pub(crate) fn thinking_mode(state: &AppState, prompt: &[u32]) -> Option<bool> {
    let thinks = state
        .engine
        .chat_template_source()
        .is_some_and(reasoning::template_thinks);
    thinks.then(|| {
        let tail = &prompt[prompt.len().saturating_sub(8)..];
        let text = state.engine.tokenizer().decode(tail).unwrap_or_default();
        reasoning::prompt_opens(&text)
    })
}

/// The request's output constraint: `response_format` / `structured_outputs`, or the
/// grammar of a forced tool call, not both.
fn one_constraint(
    format: Option<kr_engine::Constraint>,
    forced: Option<kr_engine::Constraint>,
) -> Result<Option<kr_engine::Constraint>> {
    match (format, forced) {
        (Some(_), Some(_)) => Err(ApiError::bad(
            "tool_choice",
            "a forced tool call cannot be combined with `response_format`",
        )),
        (a, b) => Ok(a.or(b)),
    }
}

/// A finished choice as the assistant message (content, `reasoning_content`, `tool_calls`)
/// and its finish reason (`tool_calls` when it called tools).
fn reply_message(
    c: &generate::Completion,
    thinking: Option<bool>,
    format: Option<ToolFormat>,
) -> (Value, &'static str) {
    let (reasoning, text) = match thinking {
        Some(opened) => reasoning::split(&c.text, opened),
        None => (None, c.text.clone()),
    };
    let (content, calls) = match format {
        Some(f) => tools::parse(f, &text),
        None => (text, Vec::new()),
    };
    let (mut message, finish) = match calls.is_empty() {
        true => (
            json!({"role": "assistant", "content": content}),
            generate::finish_str(c.finish),
        ),
        false => {
            let content = (!content.is_empty()).then_some(content);
            let m = json!({"role": "assistant", "content": content, "tool_calls": tool_calls_json(&calls)});
            (m, "tool_calls")
        }
    };
    if let Some(r) = reasoning {
        message["reasoning_content"] = r.into();
    }
    (message, finish)
}

/// One parsed call as OpenAI writes it.
fn tool_call_json(c: &ToolCall) -> Value {
    json!({"id": new_id("call"), "type": "function", "function": {"name": c.name, "arguments": c.arguments}})
}

/// The OpenAI `tool_calls` list of parsed calls.
fn tool_calls_json(calls: &[ToolCall]) -> Value {
    calls.iter().map(tool_call_json).collect()
}

/// `logprobs: true` (+ `top_logprobs` alternatives) → the engine's `logprobs`.
fn logprobs_param(logprobs: Option<bool>, top: Option<u32>) -> Result<Option<u32>> {
    match (logprobs.unwrap_or(false), top) {
        (_, Some(t)) if t > kr_core::sampling::MAX_TOP_LOGPROBS => Err(ApiError::bad(
            "top_logprobs",
            format!("invalid value {t} for `top_logprobs`: allowed 0..=20"),
        )),
        (false, Some(_)) => Err(ApiError::bad(
            "top_logprobs",
            "`top_logprobs` requires `logprobs: true`",
        )),
        (true, t) => Ok(Some(t.unwrap_or(0))),
        (false, None) => Ok(None),
    }
}

/// One token's entry of a chat `logprobs.content` list.
pub fn logprob_entry(state: &AppState, tok: &TokenOut) -> Option<Value> {
    let lp = tok.logprobs.as_ref()?;
    let tk = state.engine.tokenizer();
    let item = |id: u32, logprob: f32| {
        let text = tk.token_text(id);
        json!({"token": text, "logprob": logprob, "bytes": text.as_bytes()})
    };
    let mut entry = item(tok.id, lp.logprob);
    entry["top_logprobs"] = lp.top.iter().map(|&(id, l)| item(id, l)).collect();
    Some(entry)
}

/// POST /v1/chat/completions
pub async fn chat_completions(
    State(server): State<Server>,
    ApiJson(req): ApiJson<ChatRequest>,
) -> Result<Response> {
    let arrived = Instant::now();
    let state = check_request(&server, &req.model, &req.extra).await?;
    check_nested(&state, &req)?;
    let messages = to_messages(&req.messages)?;
    let common = req.common();
    let n = common.n()?;
    let mut params = common.to_params(&state.sampling)?;
    params.logprobs = logprobs_param(req.logprobs, req.top_logprobs)?;
    let setup = tool_setup(&state, &req)?;
    let constraint = one_constraint(common.constraint()?, setup.forced)?;
    let prompt = generate::tokenize(&state, Prompt::Conversation(messages, setup.ctx)).await?;
    // A grammar makes the reply start at once in its own form: a block the prompt opened is
    // never closed, so nothing is reasoning then.
    let thinking = thinking_mode(&state, &prompt).filter(|&opened| !opened || constraint.is_none());
    let job = Job {
        prompts: &[prompt],
        params: &params,
        max_tokens: req.max_completion_tokens.or(req.max_tokens),
        n,
        options: RequestOptions {
            constraint,
            ..RequestOptions::default()
        },
        fields: FieldNames::CHAT,
    };
    let streams = generate::launch(&state, arrived, job)?;
    let meta = json!({
        "id": new_id("chatcmpl"),
        "created": unix_now(),
        "model": req.model,
    });
    if req.stream.unwrap_or(false) {
        let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
        let enc = ChatEncoder {
            state: state.clone(),
            meta,
            include_usage,
            usage: Vec::new(),
            n,
            tools: setup.format,
            held: vec![tools::CallHold::default(); n],
            splitters: thinking.map(|opened| vec![reasoning::Splitter::new(opened); n]),
        };
        let pacing = state.pacing(true, arrived);
        return Ok(event_response(streams, enc, pacing, "text/event-stream"));
    }
    let outs = generate::collect_within(&state, arrived, streams).await?;
    let choices: Vec<Value> = outs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let lp = params.logprobs.map(|_| {
                let content: Vec<Value> = c
                    .tokens
                    .iter()
                    .filter_map(|t| logprob_entry(&state, t))
                    .collect();
                json!({ "content": content })
            });
            let (message, finish) = reply_message(c, thinking, setup.format);
            json!({"index": i, "message": message, "logprobs": lp, "finish_reason": finish})
        })
        .collect();
    let usages: Vec<Usage> = outs.iter().map(|c| c.usage).collect();
    let mut body = meta;
    body["object"] = "chat.completion".into();
    body["choices"] = choices.into();
    body["usage"] = usage_json(&generate::total_usage(&usages, n));
    Ok(Json(body).into_response())
}

/// SSE chunks of a chat completion.
struct ChatEncoder {
    state: AppState,
    meta: Value,
    include_usage: bool,
    usage: Vec<Usage>,
    n: usize,
    /// The tool-call format when the request has tools.
    tools: Option<ToolFormat>,
    /// Per choice: text held back since a tool call may have begun.
    held: Vec<tools::CallHold>,
    /// Per choice, for a template that thinks: reasoning apart from content.
    splitters: Option<Vec<reasoning::Splitter>>,
}

impl ChatEncoder {
    /// With tools, the part of `text` to send now; the rest is held until the call (or not)
    /// is complete. Text is held from where a tool call's start marker begins, or could.
    fn release(&mut self, index: usize, text: String) -> String {
        match (self.tools, self.held.get_mut(index)) {
            (Some(format), Some(hold)) => hold.push(format, &text),
            _ => text,
        }
    }

    fn chunk(&self, index: usize, delta: Value, logprobs: Value, finish: Value) -> Bytes {
        let mut c = self.meta.clone();
        c["object"] = "chat.completion.chunk".into();
        c["choices"] = json!([{
            "index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish,
        }]);
        if self.include_usage {
            c["usage"] = Value::Null;
        }
        sse(&c)
    }
}

impl Encoder for ChatEncoder {
    fn start(&mut self, index: usize) -> Vec<Bytes> {
        let delta = json!({"role": "assistant", "content": ""});
        vec![self.chunk(index, delta, Value::Null, Value::Null)]
    }

    fn tokens(&mut self, index: usize, toks: &[TokenOut]) -> Vec<Bytes> {
        let entries: Vec<Value> = toks
            .iter()
            .filter_map(|t| logprob_entry(&self.state, t))
            .collect();
        let text: String = toks.iter().map(|t| t.text.as_str()).collect();
        let (thought, text) = match self.splitters.as_mut().and_then(|s| s.get_mut(index)) {
            Some(s) => s.push(&text),
            None => (String::new(), text),
        };
        self.text_deltas(index, thought, text, entries)
    }

    fn finish(&mut self, index: usize, reason: FinishReason, usage: Usage) -> Vec<Bytes> {
        let held = self
            .splitters
            .as_mut()
            .and_then(|s| s.get_mut(index))
            .map(|s| s.finish());
        let mut out = match held {
            Some((thought, text)) => self.text_deltas(index, thought, text, Vec::new()),
            None => Vec::new(),
        };
        out.extend(self.finish_calls(index, reason, usage));
        out
    }

    fn error(&mut self, _index: usize, message: &str) -> Vec<Bytes> {
        vec![sse(&json!({"error": {
            "message": message, "type": "server_error", "param": null, "code": null,
        }}))]
    }

    fn end(&mut self) -> Vec<Bytes> {
        let mut out = Vec::new();
        if self.include_usage {
            let mut c = self.meta.clone();
            c["object"] = "chat.completion.chunk".into();
            c["choices"] = json!([]);
            c["usage"] = usage_json(&generate::total_usage(&self.usage, self.n));
            out.push(sse(&c));
        }
        out.push(Bytes::from_static(b"data: [DONE]\n\n"));
        out
    }

    fn keep_alive(&self) -> Option<Bytes> {
        Some(Bytes::from_static(b": keep-alive\n\n"))
    }
}

impl ChatEncoder {
    /// A delta chunk without logprobs or finish reason.
    fn delta(&self, index: usize, delta: Value) -> Bytes {
        self.chunk(index, delta, Value::Null, Value::Null)
    }

    /// The chunks of new text: its reasoning, then its content (what tool-call holding lets
    /// go) with its logprob `entries`.
    fn text_deltas(
        &mut self,
        index: usize,
        thought: String,
        text: String,
        entries: Vec<Value>,
    ) -> Vec<Bytes> {
        let mut out = Vec::new();
        if !thought.is_empty() {
            out.push(self.delta(index, json!({ "reasoning_content": thought })));
        }
        let text = self.release(index, text);
        if text.is_empty() && entries.is_empty() {
            return out;
        }
        let lp = match entries.is_empty() {
            true => Value::Null,
            false => json!({ "content": entries }),
        };
        out.push(self.chunk(index, json!({ "content": text }), lp, Value::Null));
        out
    }

    /// The end of choice `index`: its usage, the tool calls held back (if any), the finish chunk.
    fn finish_calls(&mut self, index: usize, reason: FinishReason, usage: Usage) -> Vec<Bytes> {
        if self.usage.len() <= index {
            self.usage.resize(index + 1, Usage::default());
        }
        self.usage[index] = usage;
        let mut out = Vec::new();
        let mut reason = generate::finish_str(reason);
        if let (Some(format), Some(held)) = (
            self.tools,
            self.held.get_mut(index).map(tools::CallHold::finish),
        ) {
            let (content, calls) = tools::parse(format, &held);
            if !content.is_empty() {
                out.push(self.delta(index, json!({ "content": content })));
            }
            if !calls.is_empty() {
                let deltas: Vec<Value> = calls
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        let mut d = tool_call_json(c);
                        d["index"] = i.into();
                        d
                    })
                    .collect();
                out.push(self.delta(index, json!({ "tool_calls": deltas })));
                reason = "tool_calls";
            }
        }
        out.push(self.chunk(index, json!({}), Value::Null, reason.into()));
        out
    }
}
