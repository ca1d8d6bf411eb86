//! POST /v1/chat/completions: messages through the chat template; streamed as SSE chunks
//! (`chat.completion.chunk`, then an optional usage chunk, then `data: [DONE]`) or answered
//! as one `chat.completion`.

use super::{check_request, new_id, openai_request, usage_json};
use crate::error::{ApiError, Result};
use crate::extract::ApiJson;
use crate::generate::{self, FieldNames, Job, TokenOut};
use crate::state::{unix_now, AppState};
use crate::stream::{event_response, sse, Encoder};
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use kr_engine::{ChatMessage, FinishReason, Prompt, RequestOptions, Usage};
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
    }
}

#[derive(Debug, Deserialize)]
pub struct MessageIn {
    pub role: String,
    #[serde(default)]
    pub content: Option<ContentIn>,
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
            Ok(ChatMessage::new(role, &content))
        })
        .collect()
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
    State(state): State<AppState>,
    ApiJson(req): ApiJson<ChatRequest>,
) -> Result<Response> {
    let arrived = Instant::now();
    check_request(&state, &req.model, &req.extra)?;
    let messages = to_messages(&req.messages)?;
    let common = req.common();
    let n = common.n()?;
    let mut params = common.to_params()?;
    params.logprobs = logprobs_param(req.logprobs, req.top_logprobs)?;
    let prompt = generate::tokenize(&state, Prompt::Chat(messages)).await?;
    let job = Job {
        prompts: &[prompt],
        params: &params,
        max_tokens: req.max_completion_tokens.or(req.max_tokens),
        n,
        options: RequestOptions {
            constraint: common.constraint()?,
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
            json!({
                "index": i,
                "message": {"role": "assistant", "content": c.text},
                "logprobs": lp,
                "finish_reason": generate::finish_str(c.finish),
            })
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
}

impl ChatEncoder {
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
        if text.is_empty() && entries.is_empty() {
            return Vec::new();
        }
        let lp = match entries.is_empty() {
            true => Value::Null,
            false => json!({ "content": entries }),
        };
        vec![self.chunk(index, json!({ "content": text }), lp, Value::Null)]
    }

    fn finish(&mut self, index: usize, reason: FinishReason, usage: Usage) -> Vec<Bytes> {
        if self.usage.len() <= index {
            self.usage.resize(index + 1, Usage::default());
        }
        self.usage[index] = usage;
        let reason = generate::finish_str(reason).into();
        vec![self.chunk(index, json!({}), Value::Null, reason)]
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
