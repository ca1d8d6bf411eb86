//! What every generating route shares, whatever its dialect: tokenising off the async
//! threads, the context and `max_tokens` checks, admission, submitting `n` engine requests
//! (seeds `seed + i`), metrics per request, and collecting a request's output.
//!
//! Cancellation: a [`Tracked`] owns its engine `RequestStream`; when the client goes away
//! axum drops the handler future or the response body, which drops the stream, which aborts
//! the request in the engine and frees its KV blocks.

use crate::error::{ApiError, Result};
use crate::metrics::{Metrics, Outcome};
use crate::state::{AppState, Permit};
use futures_util::Stream;
use kr_engine::sampler::TokenLogprobs;
use kr_engine::{
    Event, FinishReason, GenerateRequest, Prompt, RequestOptions, RequestStream, SamplingParams,
    Usage,
};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// Tokenises a prompt (rendering the chat template), coalesced with concurrent ones into
/// one batch encode on the blocking pool (see `tokenize.rs`).
pub async fn tokenize(state: &AppState, prompt: Prompt) -> Result<Vec<u32>> {
    state.tokenizer.tokenize(prompt).await.map_err(|e| match e {
        kr_engine::EngineError::Model(m) => ApiError::bad("messages", m.to_string()),
        other => other.into(),
    })
}

/// Checks the prompt against the context window and settles `max_tokens`: a request that
/// names none gets what fits (at most the server's cap).
pub fn max_tokens(
    state: &AppState,
    requested: Option<u32>,
    prompt_param: &'static str,
    prompt_len: usize,
) -> Result<u32> {
    let ctx = state.engine.info().max_model_len;
    if prompt_len == 0 {
        return Err(ApiError::bad(prompt_param, "the prompt is empty"));
    }
    if prompt_len >= ctx {
        return Err(ApiError::BadRequest {
            message: format!("the prompt has {prompt_len} tokens but the context window is {ctx}"),
            param: Some(prompt_param.into()),
            code: Some("context_length_exceeded"),
        });
    }
    // A request must fit the context window and the whole KV pool.
    let info = state.engine.info();
    let pool = info.num_kv_blocks * info.block_size;
    let fits = (ctx - prompt_len).min(pool.saturating_sub(prompt_len));
    if fits == 0 {
        return Err(ApiError::BadRequest {
            message: format!("the prompt has {prompt_len} tokens but the KV cache holds {pool}"),
            param: Some(prompt_param.into()),
            code: Some("context_length_exceeded"),
        });
    }
    let room = u32::try_from(fits).unwrap_or(u32::MAX);
    let cap = state.cfg().max_tokens_cap;
    match requested {
        None => Ok(room.min(cap)),
        Some(0) => Err(ApiError::bad("max_tokens", "max_tokens must be at least 1")),
        Some(m) if m > cap => Err(ApiError::bad(
            "max_tokens",
            format!("max_tokens {m} exceeds this server's limit of {cap}"),
        )),
        Some(m) if m > room => Err(ApiError::BadRequest {
            message: format!(
                "prompt ({prompt_len} tokens) plus max_tokens ({m}) exceeds the context window \
                 of {ctx} or the KV cache of {pool} tokens"
            ),
            param: Some("max_tokens".into()),
            code: Some("context_length_exceeded"),
        }),
        Some(m) => Ok(m),
    }
}

/// Admits and submits `n` requests per prompt; request `k` of a prompt gets seed `seed + k`.
/// Each goes at the priority of the `X-Priority` header ([`crate::priority`]).
pub fn launch(
    state: &AppState,
    arrived: Instant,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
    n: usize,
) -> Result<Vec<Tracked>> {
    launch_with(
        state,
        arrived,
        prompts,
        params,
        n,
        &RequestOptions::default(),
    )
}

/// [`launch`] with engine request options (prompt logprobs).
pub fn launch_with(
    state: &AppState,
    arrived: Instant,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
    n: usize,
    opts: &RequestOptions,
) -> Result<Vec<Tracked>> {
    params.validate(state.engine.info().config.vocab_size)?;
    let permits = state
        .admission
        .try_acquire(prompts.len() * n)
        .inspect_err(|_| state.metrics.count(Outcome::Rejected))?;
    let mut out = Vec::with_capacity(permits.len());
    let jobs = prompts
        .iter()
        .flat_map(|p| (0..n as u64).map(move |k| (p, k)));
    for ((prompt, k), permit) in jobs.zip(permits) {
        let mut params = params.clone();
        params.seed = params.seed.map(|s| s.wrapping_add(k));
        let req = GenerateRequest {
            prompt: Prompt::Tokens(prompt.clone()),
            params,
        };
        let opts = RequestOptions {
            priority: crate::priority::current(),
            ..opts.clone()
        };
        let stream = state.engine.submit_with(req, opts)?;
        out.push(Tracked {
            stream,
            metrics: state.clone(),
            arrived,
            last_token: None,
            ended: false,
            _permit: permit,
        });
    }
    Ok(out)
}

/// An engine stream that records TTFT, inter-token and end-to-end latency and the outcome,
/// and holds its admission permit until it ends or is dropped.
pub struct Tracked {
    stream: RequestStream,
    metrics: AppState,
    arrived: Instant,
    last_token: Option<Instant>,
    ended: bool,
    _permit: Permit,
}

impl Tracked {
    fn metrics(&self) -> &Metrics {
        &self.metrics.metrics
    }

    fn observe(&mut self, ev: Option<Event>) -> Option<Event> {
        let now = Instant::now();
        let ev = match ev {
            None => Some(Event::Error(
                "the engine stopped before the request finished".into(),
            )),
            some => some,
        };
        match &ev {
            Some(Event::Token { .. }) => {
                match self.last_token {
                    None => self.metrics().ttft.observe(now - self.arrived),
                    Some(t) => self.metrics().inter_token.observe(now - t),
                }
                self.last_token = Some(now);
            }
            Some(Event::Finished { reason, .. }) => {
                self.ended = true;
                self.metrics().e2e.observe(now - self.arrived);
                self.metrics().count(match reason {
                    FinishReason::Stop => Outcome::Stop,
                    FinishReason::Length => Outcome::Length,
                    FinishReason::Abort => Outcome::Cancelled,
                });
            }
            Some(Event::Error(_)) => {
                self.ended = true;
                self.metrics().count(Outcome::Error);
            }
            None => {}
        }
        ev
    }
}

impl Stream for Tracked {
    type Item = Event;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.stream).poll_next(cx) {
            Poll::Ready(ev) => Poll::Ready(this.observe(ev)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if !self.ended {
            self.metrics().count(Outcome::Cancelled);
        }
    }
}

/// One generated token as the dialects report it.
#[derive(Debug, Clone)]
pub struct TokenOut {
    pub id: u32,
    pub text: String,
    pub logprobs: Option<TokenLogprobs>,
    /// The prompt's logprobs, on the first token of a request that asked for them.
    pub prompt_logprobs: Option<Vec<Option<TokenLogprobs>>>,
}

/// The whole output of one finished request.
#[derive(Debug, Clone)]
pub struct Completion {
    pub text: String,
    pub tokens: Vec<TokenOut>,
    /// One entry per prompt token (the first `None`) when prompt logprobs were asked for.
    pub prompt_logprobs: Option<Vec<Option<TokenLogprobs>>>,
    pub finish: FinishReason,
    pub usage: Usage,
}

/// Waits for a request to finish and gathers its output.
pub async fn collect(mut t: Tracked) -> Result<Completion> {
    use futures_util::StreamExt;
    let mut text = String::new();
    let mut tokens = Vec::new();
    let mut prompt_lps = None;
    while let Some(ev) = t.next().await {
        match ev {
            Event::Token {
                id,
                text: piece,
                logprobs,
                prompt_logprobs,
            } => {
                text.push_str(&piece);
                prompt_lps = prompt_lps.or(prompt_logprobs);
                tokens.push(TokenOut {
                    id,
                    text: piece,
                    logprobs,
                    prompt_logprobs: None,
                });
            }
            Event::Finished { reason, usage } => {
                return Ok(Completion {
                    text,
                    tokens,
                    prompt_logprobs: prompt_lps,
                    finish: reason,
                    usage,
                })
            }
            Event::Error(e) => return Err(ApiError::Internal(format!("generation failed: {e}"))),
        }
    }
    Err(ApiError::Internal(
        "the request ended without a result".into(),
    ))
}

/// Waits for every request of a job, in order.
pub async fn collect_all(streams: Vec<Tracked>) -> Result<Vec<Completion>> {
    futures_util::future::join_all(streams.into_iter().map(collect))
        .await
        .into_iter()
        .collect()
}

/// [`collect_all`] under the server's per-request time limit (504 when it passes; the
/// requests are dropped, which aborts them).
pub async fn collect_within(
    state: &AppState,
    arrived: Instant,
    streams: Vec<Tracked>,
) -> Result<Vec<Completion>> {
    let Some(limit) = state.cfg().request_timeout else {
        return collect_all(streams).await;
    };
    tokio::time::timeout_at((arrived + limit).into(), collect_all(streams))
        .await
        .map_err(|_| ApiError::Timeout { limit })?
}

/// Token counts of a job: prompts counted once per prompt, completions summed.
pub fn total_usage(usages: &[Usage], n: usize) -> Usage {
    let mut u = Usage::default();
    for (i, x) in usages.iter().enumerate() {
        if i % n.max(1) == 0 {
            u.prompt_tokens += x.prompt_tokens;
            u.cached_prompt_tokens += x.cached_prompt_tokens;
        }
        u.completion_tokens += x.completion_tokens;
    }
    u
}

/// OpenAI's and Ollama's name for a finish reason.
pub fn finish_str(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Abort => "abort",
    }
}
