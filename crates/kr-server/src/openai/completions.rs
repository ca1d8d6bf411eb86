//! POST /v1/completions: raw text (or token id) prompts, no chat template. `n` choices per
//! prompt, choice `p * n + k` for prompt `p`; `echo` prepends the prompt; `logprobs: N`
//! returns the legacy `{tokens, token_logprobs, top_logprobs, text_offset}` object.

use super::{check_request, new_id, openai_request, usage_json};
use crate::error::{ApiError, Result};
use crate::extract::ApiJson;
use crate::gen::{self, TokenOut};
use crate::state::{unix_now, AppState};
use crate::stream::{event_response, sse, Encoder};
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use kr_engine::{FinishReason, Prompt, Usage};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::time::Instant;

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
    if req.echo == Some(true) && req.logprobs.is_some() {
        return Err(ApiError::bad(
            "echo",
            "`echo` with `logprobs` (prompt logprobs) is not supported",
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
            Prompt::Chat(_) => String::new(),
        };
        ids.push(gen::tokenize(state, p).await.map_err(as_prompt_error)?);
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

/// POST /v1/completions
pub async fn completions(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response> {
    let arrived = Instant::now();
    check_request(&state, &req.model, &req.extra)?;
    let common = req.common();
    let n = common.n()?;
    check_unsupported(&req, n)?;
    let mut params = common.to_params()?;
    params.logprobs = req.logprobs;
    let (ids, texts) = prepare(&state, prompts(req.prompt)?).await?;
    let longest = ids.iter().map(Vec::len).max().unwrap_or(0);
    let shortest = ids.iter().map(Vec::len).min().unwrap_or(0);
    let asked = Some(req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS));
    gen::max_tokens(&state, None, "prompt", shortest)?;
    params.max_tokens = gen::max_tokens(&state, asked, "prompt", longest)?;
    let streams = gen::launch(&state, arrived, &ids, &params, n)?;
    let echo = req.echo.unwrap_or(false);
    let echoes: Vec<String> = (0..streams.len())
        .map(|i| {
            if echo {
                texts[i / n].clone()
            } else {
                String::new()
            }
        })
        .collect();
    let meta = json!({"id": new_id("cmpl"), "object": "text_completion", "created": unix_now(), "model": req.model});
    if req.stream.unwrap_or(false) {
        let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
        let enc = CompletionEncoder {
            state: state.clone(),
            meta,
            include_usage,
            usage: Vec::new(),
            n,
            echoes,
        };
        let pacing = state.pacing(true, arrived);
        return Ok(event_response(streams, enc, pacing, "text/event-stream"));
    }
    let outs = gen::collect_within(&state, arrived, streams).await?;
    let choices: Vec<Value> = outs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let lp = params
                .logprobs
                .map(|_| legacy_logprobs(&state, &c.tokens, echoes[i].len()));
            json!({
                "index": i,
                "text": format!("{}{}", echoes[i], c.text),
                "logprobs": lp,
                "finish_reason": gen::finish_str(c.finish),
            })
        })
        .collect();
    let usages: Vec<Usage> = outs.iter().map(|c| c.usage).collect();
    let mut body = meta;
    body["choices"] = choices.into();
    body["usage"] = usage_json(&gen::total_usage(&usages, n));
    Ok(Json(body).into_response())
}

/// The legacy logprobs object for a run of tokens whose text starts at `offset`.
fn legacy_logprobs(state: &AppState, toks: &[TokenOut], mut offset: usize) -> Value {
    let tk = state.engine.tokenizer();
    let (mut tokens, mut lps, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
    for t in toks {
        let Some(lp) = &t.logprobs else { continue };
        let text = tk.token_text(t.id);
        offsets.push(offset);
        offset += text.len();
        tokens.push(text);
        lps.push(lp.logprob);
        let top: Map<String, Value> = lp
            .top
            .iter()
            .map(|&(id, l)| (tk.token_text(id), json!(l)))
            .collect();
        tops.push(Value::Object(top));
    }
    json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
}

/// SSE chunks of a legacy completion.
struct CompletionEncoder {
    state: AppState,
    meta: Value,
    include_usage: bool,
    usage: Vec<Usage>,
    n: usize,
    echoes: Vec<String>,
}

impl CompletionEncoder {
    fn chunk(&self, index: usize, text: &str, logprobs: Value, finish: Value) -> Bytes {
        let mut c = self.meta.clone();
        c["choices"] =
            json!([{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}]);
        if self.include_usage {
            c["usage"] = Value::Null;
        }
        sse(&c)
    }
}

impl Encoder for CompletionEncoder {
    fn start(&mut self, index: usize) -> Vec<Bytes> {
        match self.echoes.get(index) {
            Some(e) if !e.is_empty() => vec![self.chunk(index, e, Value::Null, Value::Null)],
            _ => Vec::new(),
        }
    }

    fn tokens(&mut self, index: usize, toks: &[TokenOut]) -> Vec<Bytes> {
        let has_lp = toks.iter().any(|t| t.logprobs.is_some());
        let text: String = toks.iter().map(|t| t.text.as_str()).collect();
        if text.is_empty() && !has_lp {
            return Vec::new();
        }
        let lp = match has_lp {
            true => legacy_logprobs(&self.state, toks, 0),
            false => Value::Null,
        };
        vec![self.chunk(index, &text, lp, Value::Null)]
    }

    fn finish(&mut self, index: usize, reason: FinishReason, usage: Usage) -> Vec<Bytes> {
        if self.usage.len() <= index {
            self.usage.resize(index + 1, Usage::default());
        }
        self.usage[index] = usage;
        vec![self.chunk(index, "", Value::Null, gen::finish_str(reason).into())]
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
            c["usage"] = usage_json(&gen::total_usage(&self.usage, self.n));
            out.push(sse(&c));
        }
        out.push(Bytes::from_static(b"data: [DONE]\n\n"));
        out
    }

    fn keep_alive(&self) -> Option<Bytes> {
        Some(Bytes::from_static(b": keep-alive\n\n"))
    }
}
