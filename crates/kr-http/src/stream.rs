//! Streaming response bodies shared by SSE (OpenAI) and NDJSON (Ollama): the events of all
//! of a job's requests merged as they come, turned into bytes by a dialect's [`Encoder`].
//!
//! The body owns the engine streams, so a client that disconnects (hyper drops the body on
//! a failed write) aborts every request of the job. The engine never waits on the client:
//! its events queue in the per-request channel while a slow client reads. A client that
//! stops reading fills the socket buffers, then hyper stops polling this body; the engine
//! goes on sending into the unbounded channel, which therefore holds at most `max_tokens`
//! token events (plus the last one) per request: memory bounded by the request's limit.
//!
//! Coalescing: request `i`'s tokens are held in a run until it has `interval` tokens or its
//! first token has waited `max_hold`; a request's end or error sends what is held.

use crate::generate::{TokenOut, Tracked};
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{select_all, BoxStream, SelectAll};
use futures_util::StreamExt;
use kr_engine::{Event, FinishReason, Usage};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::{Duration, Instant};

/// Turns a job's events into the bytes of one dialect.
pub trait Encoder: Send + 'static {
    /// Before any event: once per request (choice) index.
    fn start(&mut self, _index: usize) -> Vec<Bytes> {
        Vec::new()
    }
    /// A run of one or more tokens of request `index` (several when coalescing).
    fn tokens(&mut self, index: usize, toks: &[TokenOut]) -> Vec<Bytes>;
    fn finish(&mut self, index: usize, reason: FinishReason, usage: Usage) -> Vec<Bytes>;
    fn error(&mut self, index: usize, message: &str) -> Vec<Bytes>;
    /// After every request has ended.
    fn end(&mut self) -> Vec<Bytes>;
    /// A no-op line sent while nothing else is (SSE comment); `None` for none.
    fn keep_alive(&self) -> Option<Bytes> {
        None
    }
}

/// `data: <json>\n\n`, one SSE event.
pub fn sse(value: &serde_json::Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

/// `<json>\n`, one NDJSON line.
pub fn ndjson(value: &serde_json::Value) -> Bytes {
    Bytes::from(format!("{value}\n"))
}

struct BodyState<E> {
    merged: SelectAll<BoxStream<'static, (usize, Event)>>,
    enc: E,
    pending: VecDeque<Bytes>,
    done: bool,
    keep_alive: Option<Duration>,
    /// Tokens sent together (A6 `stream_interval`); `held[i]` waits for request `i`'s run.
    interval: usize,
    held: Vec<Vec<TokenOut>>,
    /// A run is sent once its first token has waited this long (A6 `stream_interval_ms`);
    /// `held_since[i]`: when the first token of `held[i]` arrived.
    max_hold: Option<Duration>,
    held_since: Vec<Option<Instant>>,
    /// When the job runs out of time (A7 per-request timeout).
    deadline: Option<Instant>,
}

impl<E: Encoder> BodyState<E> {
    /// Sends request `i`'s held tokens, if any.
    fn flush(&mut self, i: usize) {
        if let Some(since) = self.held_since.get_mut(i) {
            *since = None;
        }
        if let Some(run) = self.held.get_mut(i).filter(|h| !h.is_empty()) {
            let run = std::mem::take(run);
            self.pending.extend(self.enc.tokens(i, &run));
        }
    }

    /// The time limit passed: send what is held, an error, the end; abort every request.
    fn expire(&mut self) {
        for i in 0..self.held.len() {
            self.flush(i);
        }
        self.pending.extend(
            self.enc
                .error(0, "the request exceeded the server's time limit"),
        );
        self.merged = select_all(Vec::new());
        self.done = true;
        self.pending.extend(self.enc.end());
    }

    /// When the oldest held run must go out, if a time limit is set and a run is held.
    fn next_flush(&self) -> Option<Instant> {
        let hold = self.max_hold?;
        self.held_since.iter().flatten().min().map(|&t| t + hold)
    }

    /// Sends every run whose first token has waited `max_hold`.
    fn flush_due(&mut self, now: Instant) {
        let Some(hold) = self.max_hold else { return };
        for i in 0..self.held.len() {
            if self.held_since[i].is_some_and(|t| t + hold <= now) {
                self.flush(i);
            }
        }
    }

    fn on_event(&mut self, next: Option<(usize, Event)>) {
        match next {
            Some((
                i,
                Event::Token {
                    id,
                    text,
                    logprobs,
                    prompt_logprobs,
                    ..
                },
            )) => {
                if let Some(h) = self.held.get_mut(i) {
                    h.push(TokenOut {
                        id,
                        text,
                        logprobs,
                        prompt_logprobs,
                    });
                    if h.len() >= self.interval {
                        self.flush(i);
                    } else if let Some(since) = self.held_since.get_mut(i) {
                        since.get_or_insert_with(Instant::now);
                    }
                }
            }
            Some((i, Event::Finished { reason, usage })) => {
                self.flush(i);
                self.pending.extend(self.enc.finish(i, reason, usage));
            }
            Some((i, Event::Embedding { .. })) => {
                self.flush(i);
                self.pending
                    .extend(self.enc.error(i, "an embedding in a generation stream"));
            }
            Some((i, Event::Error(msg))) => {
                self.flush(i);
                self.pending.extend(self.enc.error(i, &msg));
            }
            None => {
                for i in 0..self.held.len() {
                    self.flush(i);
                }
                self.done = true;
                self.pending.extend(self.enc.end());
            }
        }
    }
}

async fn next_chunk<E: Encoder>(
    mut st: BodyState<E>,
) -> Option<(Result<Bytes, Infallible>, BodyState<E>)> {
    loop {
        if let Some(b) = st.pending.pop_front() {
            return Some((Ok(b), st));
        }
        if st.done {
            return None;
        }
        let now = Instant::now();
        if st.deadline.is_some_and(|d| d <= now) {
            st.expire();
            continue;
        }
        st.flush_due(now);
        if !st.pending.is_empty() {
            continue;
        }
        // Wake for the next event, or the first of: keep-alive, time limit, a held run.
        let wake = [st.keep_alive.map(|k| now + k), st.deadline, st.next_flush()]
            .into_iter()
            .flatten()
            .min();
        let next = match wake {
            Some(t) => match tokio::time::timeout_at(t.into(), st.merged.next()).await {
                Ok(next) => next,
                Err(_) => {
                    let now = Instant::now();
                    let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
                    if !due(st.deadline) && !due(st.next_flush()) {
                        st.pending.extend(st.enc.keep_alive());
                    }
                    continue;
                }
            },
            None => st.merged.next().await,
        };
        st.on_event(next);
    }
}

/// How a streaming body is paced.
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    /// Send a keep-alive after this long without anything else to send.
    pub keep_alive: Option<Duration>,
    /// Send tokens in runs of this many (the last run of a request may be shorter).
    pub interval: usize,
    /// ... or once a run's first token has waited this long.
    pub max_hold: Option<Duration>,
    /// End the stream with an error (aborting its requests) at this time.
    pub deadline: Option<Instant>,
}

/// A streaming response: `content_type` body produced by `enc` from the job's streams.
pub fn event_response<E: Encoder>(
    streams: Vec<Tracked>,
    mut enc: E,
    pacing: Pacing,
    content_type: &'static str,
) -> Response {
    let mut pending = VecDeque::new();
    let n = streams.len();
    for i in 0..n {
        pending.extend(enc.start(i));
    }
    let merged = select_all(
        streams
            .into_iter()
            .enumerate()
            .map(|(i, s)| s.map(move |ev| (i, ev)).boxed()),
    );
    let st = BodyState {
        merged,
        enc,
        pending,
        done: false,
        keep_alive: pacing.keep_alive,
        interval: pacing.interval.max(1),
        held: vec![Vec::new(); n],
        max_hold: pacing.max_hold,
        held_since: vec![None; n],
        deadline: pacing.deadline,
    };
    let body = Body::from_stream(futures_util::stream::unfold(st, next_chunk));
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}
