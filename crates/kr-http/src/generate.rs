//! What every generating route shares, whatever its dialect: tokenising off the async
//! threads, validating through the engine (one set of checks and messages for every API,
//! each field named as that API calls it), admission, submitting `n` engine requests
//! (seeds `seed + i`), metrics per request, and collecting a request's output.
//!
//! Cancellation: a [`Tracked`] owns its engine `RequestStream`; when the client goes away
//! axum drops the handler future or the response body, which drops the stream, which aborts
//! the request in the engine and frees its KV blocks. A greedy or seeded request identical
//! to one in flight joins it instead of running again (`coalesce.rs`); it is aborted when
//! the last client sharing it goes away.

use crate::coalesce::{Coalescer, Subscriber};
use crate::error::{ApiError, Result};
use crate::metrics::{Metrics, Outcome};
use crate::state::{AppState, Permit};
use futures_util::Stream;
use kr_engine::sampler::TokenLogprobs;
use kr_engine::{
    CoreError, EngineError, Event, FinishReason, ModelError, Prompt, RequestDraft, RequestOptions,
    RequestStream, SamplingParams, Usage,
};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// Tokenises a prompt (rendering the chat template), coalesced with concurrent ones into
/// one batch encode on the blocking pool (see `tokenize.rs`).
pub async fn tokenize(state: &AppState, prompt: Prompt) -> Result<Vec<u32>> {
    state.tokenizer.tokenize(prompt).await.map_err(|e| match e {
        EngineError::Model(
            m @ (ModelError::TemplateLimit(_)
            | ModelError::TemplateDisabled(_)
            | ModelError::TemplateMemory(_)),
        ) => ApiError::bad(
            "messages",
            format!("model `{}`: {m}", state.engine.info().name),
        ),
        EngineError::Model(m @ ModelError::TemplateSandbox(_)) => ApiError::Internal(m.to_string()),
        EngineError::Model(m) => ApiError::bad("messages", m.to_string()),
        other => other.into(),
    })
}

/// Most messages a conversation may have.
pub const MAX_MESSAGES: usize = 4096;

/// The number of messages against [`MAX_MESSAGES`] (and not none).
pub fn check_message_count(n: usize) -> Result<()> {
    match n {
        0 => Err(ApiError::bad("messages", "`messages` must not be empty")),
        n if n > MAX_MESSAGES => Err(ApiError::bad(
            "messages",
            format!("`messages` has {n} entries; at most {MAX_MESSAGES} are allowed"),
        )),
        _ => Ok(()),
    }
}

/// What an API calls the engine's request fields, for its error messages.
#[derive(Debug, Clone, Copy)]
pub struct FieldNames {
    /// `prompt` or `messages`.
    pub prompt: &'static str,
    /// `max_tokens` (OpenAI) or `num_predict` (Ollama).
    pub max_tokens: &'static str,
}

impl FieldNames {
    pub const COMPLETIONS: Self = Self {
        prompt: "prompt",
        max_tokens: "max_tokens",
    };
    pub const CHAT: Self = Self {
        prompt: "messages",
        max_tokens: "max_tokens",
    };
    pub const OLLAMA_GENERATE: Self = Self {
        prompt: "prompt",
        max_tokens: "num_predict",
    };
    pub const OLLAMA_CHAT: Self = Self {
        prompt: "messages",
        max_tokens: "num_predict",
    };

    /// The engine's validation error in this API's words: the same message, with the
    /// field named as the client sent it.
    fn error(self, e: EngineError) -> ApiError {
        let rename = |param: &'static str| match param {
            "prompt" => self.prompt,
            "max_tokens" => self.max_tokens,
            other => other,
        };
        match e {
            EngineError::Core(CoreError::InvalidParam {
                param,
                value,
                allowed,
            }) => ApiError::from(CoreError::InvalidParam {
                param: rename(param),
                value,
                allowed,
            }),
            EngineError::Core(e @ CoreError::PromptTooLong { .. }) => ApiError::BadRequest {
                message: e.to_string(),
                param: Some(self.prompt.into()),
                code: Some("context_length_exceeded"),
            },
            EngineError::Core(e @ CoreError::EmptyPrompt) => {
                ApiError::bad(self.prompt, e.to_string())
            }
            other => other.into(),
        }
    }
}

/// A job: `n` choices of each prompt, with the client's sampling values and `max_tokens`
/// (`None`: what fits, at most the server's cap).
pub struct Job<'a> {
    pub prompts: &'a [Vec<u32>],
    pub params: &'a SamplingParams,
    pub max_tokens: Option<u32>,
    pub n: usize,
    pub options: RequestOptions,
    pub fields: FieldNames,
}

/// Validates every request of `job` through the engine (nothing is queued unless all
/// pass), admits them, and submits them; choice `k` of a prompt gets seed `seed + k`. Each
/// goes at the priority of the `X-Priority` header ([`crate::priority`]).
pub fn launch(state: &AppState, arrived: Instant, job: Job<'_>) -> Result<Vec<Tracked>> {
    let cap = state.cfg().max_tokens_cap;
    let options = RequestOptions {
        priority: crate::priority::current(),
        ..job.options
    };
    let mut requests = Vec::with_capacity(job.prompts.len() * job.n);
    for prompt in job.prompts {
        for k in 0..job.n as u64 {
            let mut params = job.params.clone();
            params.seed = params.seed.map(|s| s.wrapping_add(k));
            let deterministic = params.temperature <= 0.0 || params.seed.is_some();
            let parts = (
                state.model_name(),
                prompt,
                &params,
                job.max_tokens,
                &options,
            );
            let key = Coalescer::key(deterministic, &parts);
            let draft = RequestDraft {
                prompt: prompt.clone(),
                params,
                max_tokens: job.max_tokens,
                options: options.clone(),
            };
            let valid = state.engine.validate(draft, cap);
            requests.push((valid.map_err(|e| job.fields.error(e))?, key));
        }
    }
    let permits = state
        .permits
        .try_acquire(requests.len())
        .inspect_err(|_| state.metrics.count(Outcome::Rejected))?;
    let mut out = Vec::with_capacity(permits.len());
    for ((req, key), permit) in requests.into_iter().zip(permits) {
        let stream = match key {
            None => Source::Engine(state.engine.submit_validated(req)?),
            Some(key) => Source::Shared(
                state
                    .coalescer
                    .join_or_start(key, || state.engine.submit_validated(req))?,
            ),
        };
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

/// Where a request's events come from: its own engine request, or a generation it shares.
enum Source {
    Engine(RequestStream),
    Shared(Subscriber),
}

/// An engine stream that records TTFT, inter-token and end-to-end latency and the outcome,
/// and holds its admission permit until it ends or is dropped.
pub struct Tracked {
    stream: Source,
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
            Some(Event::Embedding { .. }) => {
                self.ended = true;
                self.metrics().e2e.observe(now - self.arrived);
                self.metrics().count(Outcome::Stop);
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
        let polled = match &mut this.stream {
            Source::Engine(s) => Pin::new(s).poll_next(cx),
            Source::Shared(s) => Pin::new(s).poll_next(cx),
        };
        match polled {
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
                ..
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
            Event::Embedding { .. } => break,
        }
    }
    Err(ApiError::Internal(
        "the request ended without a result".into(),
    ))
}

/// Waits for an embedding request: its vector and token counts.
pub async fn collect_embedding(mut t: Tracked) -> Result<(Vec<f32>, Usage)> {
    use futures_util::StreamExt;
    match t.next().await {
        Some(Event::Embedding { vector, usage }) => Ok((vector, usage)),
        Some(Event::Error(e)) => Err(ApiError::Internal(format!("embedding failed: {e}"))),
        _ => Err(ApiError::Internal(
            "the request ended without a result".into(),
        )),
    }
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
    within(state, arrived, collect_all(streams)).await?
}

/// `work` under the server's per-request time limit, counted from `arrived` (504 when it
/// passes; `work` is dropped, which aborts its requests).
pub async fn within<T>(
    state: &AppState,
    arrived: Instant,
    work: impl std::future::Future<Output = T>,
) -> Result<T> {
    let Some(limit) = state.cfg().request_timeout else {
        return Ok(work.await);
    };
    tokio::time::timeout_at((arrived + limit).into(), work)
        .await
        .map_err(|_| ApiError::Timeout { limit })
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
