//! POST /v1/completions: raw text (or token id) prompts, no chat template. `n` choices per
//! prompt, choice `p * n + k` for prompt `p`; `echo` prepends the prompt; `logprobs: N`
//! returns the legacy `{tokens, token_logprobs, top_logprobs, text_offset}` object.
//!
//! `echo` with `logprobs` also scores the prompt (OpenAI's legacy semantics): the prompt's
//! tokens come first in the logprobs object, the first with `null` logprob and
//! alternatives, each other with its logprob given the tokens before it (the engine's
//! prompt logprobs). `echo` with `max_tokens: 0` answers the prompt alone (the engine runs
//! the prefill and one token, which is dropped), finish reason `length`, 0 completion
//! tokens. `text_offset` counts characters of the choice's text.

use super::{check_request, new_id, openai_request, usage_json};
use crate::error::{ApiError, Result};
use crate::extract::ApiJson;
use crate::generate::{self, FieldNames, Job, TokenOut};
use crate::state::{unix_now, AppState, Server};
use crate::stream::{event_response, sse, Encoder};
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use kr_core::sampling::MAX_TOP_LOGPROBS;
use kr_engine::sampler::TokenLogprobs;
use kr_engine::{EngineHandle, FinishReason, Prompt, RequestOptions, Usage};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::time::Instant;

/// Most prompts one completions request may carry.
const MAX_PROMPTS: usize = 256;

/// OpenAI's default `max_tokens` for legacy completions.
const DEFAULT_MAX_TOKENS: u32 = 16;

openai_request! {
    pub struct CompletionRequest {
        pub model: String,
        pub prompt: PromptIn,
        pub max_tokens: Option<u32>,
        pub logprobs: Option<u32>,
        pub echo: Option<bool>,
        pub suffix: Option<String>,
        pub best_of: Option<u32>,
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptIn {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

fn prompts(p: PromptIn) -> Result<Vec<Prompt>> {
    let out: Vec<Prompt> = match p {
        PromptIn::Text(t) => vec![Prompt::Text(t)],
        PromptIn::Texts(v) => v.into_iter().map(Prompt::Text).collect(),
        PromptIn::Tokens(ids) => vec![Prompt::Tokens(ids)],
        PromptIn::TokenLists(v) => v.into_iter().map(Prompt::Tokens).collect(),
    };
    if out.is_empty() {
        return Err(ApiError::bad("prompt", "`prompt` must not be empty"));
    }
    if out.len() > MAX_PROMPTS {
        return Err(ApiError::bad(
            "prompt",
            format!(
                "`prompt` has {} entries; at most {MAX_PROMPTS} are allowed",
                out.len()
            ),
        ));
    }
    Ok(out)
}

fn check_unsupported(req: &CompletionRequest, n: usize) -> Result<()> {
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::bad("suffix", "`suffix` is not supported"));
    }
    if req.best_of.is_some_and(|b| b as usize != n) {
        return Err(ApiError::bad(
            "best_of",
            "`best_of` other than `n` is not supported",
        ));
    }
    if let Some(n) = req.logprobs.filter(|&n| n > MAX_TOP_LOGPROBS) {
        return Err(ApiError::bad(
            "logprobs",
            format!("invalid value {n} for `logprobs`: allowed 0..={MAX_TOP_LOGPROBS}"),
        ));
    }
    Ok(())
}

/// Tokenises every prompt and returns the ids with the text `echo` would repeat.
async fn prepare(state: &AppState, ps: Vec<Prompt>) -> Result<(Vec<Vec<u32>>, Vec<String>)> {
    let mut ids = Vec::with_capacity(ps.len());
    let mut texts = Vec::with_capacity(ps.len());
    for p in ps {
        let text = match &p {
            Prompt::Text(t) => t.clone(),
            Prompt::Tokens(t) => state.engine.tokenizer().decode(t).unwrap_or_default(),
            Prompt::Chat(_) | Prompt::Conversation(..) => String::new(),
        };
        ids.push(
            generate::tokenize(state, p)
                .await
                .map_err(as_prompt_error)?,
        );
        texts.push(text);
    }
    Ok((ids, texts))
}

fn as_prompt_error(e: ApiError) -> ApiError {
    match e {
        ApiError::BadRequest {
            message,
            code,
            param,
        } if param.as_deref() == Some("messages") => ApiError::BadRequest {
            message,
            code,
            param: Some("prompt".into()),
        },
        other => other,
    }
}

/// What echo does for every choice of a job.
#[derive(Debug, Clone)]
struct Echo {
    /// The prompt text each choice starts with (empty without `echo`).
    texts: Vec<String>,
    /// The prompt ids of each choice (for prompt logprobs).
    ids: Vec<Vec<u32>>,
    /// `echo` with `logprobs`: the prompt is scored.
    scored: bool,
    /// `echo` with `max_tokens: 0`: the generated token is dropped.
    only: bool,
}

/// POST /v1/completions
pub async fn completions(
    State(server): State<Server>,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response> {
    let arrived = Instant::now();
    let state = check_request(&server, &req.model, &req.extra).await?;
    let common = req.common();
    let n = common.n()?;
    check_unsupported(&req, n)?;
    let mut params = common.to_params(&state.sampling)?;
    params.logprobs = req.logprobs;
    let (ids, texts) = prepare(&state, prompts(req.prompt)?).await?;
    let echo = req.echo.unwrap_or(false);
    let asked = req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
    // `echo` with `max_tokens: 0`: run the prefill (for prompt logprobs) and one token.
    let only = echo && asked == 0;
    let prompt_logprobs = req.logprobs.filter(|_| echo);
    let job = Job {
        prompts: &ids,
        params: &params,
        max_tokens: Some(asked.max(u32::from(only))),
        n,
        options: RequestOptions {
            prompt_logprobs,
            constraint: common.constraint()?,
            ..Default::default()
        },
        fields: FieldNames::COMPLETIONS,
    };
    let streams = generate::launch(&state, arrived, job)?;
    // Choice `i` belongs to prompt `i / n`.
    let prompt_of = |i: usize| i / n;
    let echo = Echo {
        texts: (0..streams.len())
            .map(|i| {
                if echo {
                    texts[prompt_of(i)].clone()
                } else {
                    String::new()
                }
            })
            .collect(),
        ids: (0..streams.len())
            .map(|i| ids[prompt_of(i)].clone())
            .collect(),
        scored: prompt_logprobs.is_some(),
        only,
    };
    let meta = json!({"id": new_id("cmpl"), "object": "text_completion", "created": unix_now(), "model": req.model});
    if req.stream.unwrap_or(false) {
        let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
        let enc = CompletionEncoder::new(state.clone(), meta, include_usage, n, echo);
        let pacing = state.pacing(true, arrived);
        return Ok(event_response(streams, enc, pacing, "text/event-stream"));
    }
    let outs = generate::collect_within(&state, arrived, streams).await?;
    let with_lp = params.logprobs.is_some();
    Ok(Json(completion_body(&state, meta, &outs, &echo, with_lp, n)).into_response())
}

/// The non-streamed answer of a finished job.
fn completion_body(
    state: &AppState,
    meta: Value,
    outs: &[generate::Completion],
    echo: &Echo,
    with_lp: bool,
    n: usize,
) -> Value {
    let tk = &state.engine;
    let choices: Vec<Value> = outs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let gen_text = if echo.only { "" } else { c.text.as_str() };
            let lp = with_lp.then(|| {
                let mut lp = LegacyLogprobs::default();
                match (&c.prompt_logprobs, echo.scored) {
                    (Some(p), true) => lp.push_prompt(tk, &echo.ids[i], p),
                    _ => lp.offset = echo.texts[i].chars().count(),
                }
                if !echo.only {
                    lp.push_tokens(tk, &c.tokens);
                }
                lp.to_json()
            });
            let finish = if echo.only {
                FinishReason::Length
            } else {
                c.finish
            };
            json!({
                "index": i,
                "text": format!("{}{gen_text}", echo.texts[i]),
                "logprobs": lp,
                "finish_reason": generate::finish_str(finish),
            })
        })
        .collect();
    let usages: Vec<Usage> = outs
        .iter()
        .map(|c| Usage {
            completion_tokens: if echo.only {
                0
            } else {
                c.usage.completion_tokens
            },
            ..c.usage
        })
        .collect();
    let mut body = meta;
    body["choices"] = choices.into();
    body["usage"] = usage_json(&generate::total_usage(&usages, n));
    body
}

/// The legacy logprobs object, built token by token; `offset` is where the next token's
/// text starts in the choice's text, in characters.
#[derive(Debug, Default)]
struct LegacyLogprobs {
    tokens: Vec<String>,
    logprobs: Vec<Value>,
    tops: Vec<Value>,
    offsets: Vec<usize>,
    offset: usize,
}

impl LegacyLogprobs {
    fn push(&mut self, engine: &EngineHandle, id: u32, lp: Option<&TokenLogprobs>) {
        let tk = engine.tokenizer();
        let text = tk.token_text(id);
        self.offsets.push(self.offset);
        self.offset += text.chars().count();
        self.tokens.push(text);
        self.logprobs
            .push(lp.map_or(Value::Null, |l| json!(l.logprob)));
        self.tops.push(lp.map_or(Value::Null, |l| {
            let top: Map<String, Value> = l
                .top
                .iter()
                .map(|&(id, v)| (tk.token_text(id), json!(v)))
                .collect();
            Value::Object(top)
        }));
    }

    /// The prompt's tokens: the first has no logprob, each other its prompt logprob.
    fn push_prompt(&mut self, engine: &EngineHandle, ids: &[u32], lps: &[Option<TokenLogprobs>]) {
        for (&id, lp) in ids.iter().zip(lps) {
            self.push(engine, id, lp.as_ref());
        }
    }

    /// Generated tokens (those without logprobs are left out).
    fn push_tokens(&mut self, engine: &EngineHandle, toks: &[TokenOut]) {
        for t in toks {
            if let Some(lp) = &t.logprobs {
                self.push(engine, t.id, Some(lp));
            }
        }
    }

    fn to_json(&self) -> Value {
        json!({"tokens": self.tokens, "token_logprobs": self.logprobs,
               "top_logprobs": self.tops, "text_offset": self.offsets})
    }
}

/// SSE chunks of a legacy completion.
struct CompletionEncoder {
    state: AppState,
    meta: Value,
    include_usage: bool,
    usage: Vec<Usage>,
    n: usize,
    echo: Echo,
    /// Choices whose scored echo waits for the prompt logprobs (on their first token).
    echo_pending: Vec<bool>,
    /// Where each choice's next token starts in its text, in characters (`text_offset`).
    offsets: Vec<usize>,
}

impl CompletionEncoder {
    fn new(state: AppState, meta: Value, include_usage: bool, n: usize, echo: Echo) -> Self {
        let offsets = echo.texts.iter().map(|t| t.chars().count()).collect();
        let echo_pending = vec![echo.scored; echo.texts.len()];
        Self {
            state,
            meta,
            include_usage,
            usage: Vec::new(),
            n,
            echo,
            echo_pending,
            offsets,
        }
    }

    fn chunk(&self, index: usize, text: &str, logprobs: Value, finish: Value) -> Bytes {
        let mut c = self.meta.clone();
        c["choices"] =
            json!([{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}]);
        if self.include_usage {
            c["usage"] = Value::Null;
        }
        sse(&c)
    }

    /// The echo chunk of a scored prompt, once its logprobs are known (or never will be).
    fn scored_echo(&mut self, index: usize, lps: Option<&[Option<TokenLogprobs>]>) -> Vec<Bytes> {
        if !self.echo_pending.get(index).copied().unwrap_or(false) {
            return Vec::new();
        }
        self.echo_pending[index] = false;
        let text = &self.echo.texts[index];
        let lp = lps.map_or(Value::Null, |lps| {
            let mut lp = LegacyLogprobs::default();
            lp.push_prompt(&self.state.engine, &self.echo.ids[index], lps);
            lp.to_json()
        });
        vec![self.chunk(index, text, lp, Value::Null)]
    }
}

impl Encoder for CompletionEncoder {
    fn start(&mut self, index: usize) -> Vec<Bytes> {
        match self.echo.texts.get(index) {
            Some(e) if !e.is_empty() && !self.echo.scored => {
                vec![self.chunk(index, e, Value::Null, Value::Null)]
            }
            _ => Vec::new(),
        }
    }

    fn tokens(&mut self, index: usize, toks: &[TokenOut]) -> Vec<Bytes> {
        let prompt_lps = toks.iter().find_map(|t| t.prompt_logprobs.as_deref());
        let mut out = match prompt_lps {
            Some(lps) => self.scored_echo(index, Some(lps)),
            None => Vec::new(),
        };
        let has_lp = toks.iter().any(|t| t.logprobs.is_some());
        let text: String = toks.iter().map(|t| t.text.as_str()).collect();
        if self.echo.only || (text.is_empty() && !has_lp) {
            return out;
        }
        let lp = match has_lp {
            true => {
                let mut lp = LegacyLogprobs {
                    offset: self.offsets.get(index).copied().unwrap_or(0),
                    ..Default::default()
                };
                lp.push_tokens(&self.state.engine, toks);
                if let Some(o) = self.offsets.get_mut(index) {
                    *o = lp.offset;
                }
                lp.to_json()
            }
            false => Value::Null,
        };
        out.push(self.chunk(index, &text, lp, Value::Null));
        out
    }

    fn finish(&mut self, index: usize, reason: FinishReason, mut usage: Usage) -> Vec<Bytes> {
        let mut out = self.scored_echo(index, None);
        if self.usage.len() <= index {
            self.usage.resize(index + 1, Usage::default());
        }
        let reason = if self.echo.only {
            usage.completion_tokens = 0;
            FinishReason::Length
        } else {
            reason
        };
        self.usage[index] = usage;
        out.push(self.chunk(index, "", Value::Null, generate::finish_str(reason).into()));
        out
    }

    fn error(&mut self, _index: usize, message: &str) -> Vec<Bytes> {
        vec![sse(
            &json!({"error": {"message": message, "type": "server_error", "param": null, "code": null}}),
        )]
    }

    fn end(&mut self) -> Vec<Bytes> {
        let mut out = Vec::new();
        if self.include_usage {
            let mut c = self.meta.clone();
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
