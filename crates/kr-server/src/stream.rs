//! Streaming response bodies shared by SSE (OpenAI) and NDJSON (Ollama): the events of all
//! of a job's requests merged as they come, turned into bytes by a dialect's [`Encoder`].
//!
//! The body owns the engine streams, so a client that disconnects (hyper drops the body on
//! a failed write) aborts every request of the job. The engine never waits on the client:
//! its events queue in the per-request channel while a slow client reads.

use crate::gen::{TokenOut, Tracked};
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{select_all, BoxStream, SelectAll};
use futures_util::StreamExt;
use kr_engine::{Event, FinishReason, Usage};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

/// Turns a job's events into the bytes of one dialect.
pub trait Encoder: Send + 'static {
    /// Before any event: once per request (choice) index.
    fn start(&mut self, _index: usize) -> Vec<Bytes> {
        Vec::new()
    }
    fn token(&mut self, index: usize, tok: TokenOut) -> Vec<Bytes>;
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
        let next = match st.keep_alive {
            Some(d) => match tokio::time::timeout(d, st.merged.next()).await {
                Ok(next) => next,
                Err(_) => {
                    st.pending.extend(st.enc.keep_alive());
                    continue;
                }
            },
            None => st.merged.next().await,
        };
        let out = match next {
            Some((i, Event::Token { id, text, logprobs })) => {
                st.enc.token(i, TokenOut { id, text, logprobs })
            }
            Some((i, Event::Finished { reason, usage })) => st.enc.finish(i, reason, usage),
            Some((i, Event::Error(msg))) => st.enc.error(i, &msg),
            None => {
                st.done = true;
                st.enc.end()
            }
        };
        st.pending.extend(out);
    }
}

/// A streaming response: `content_type` body produced by `enc` from the job's streams.
pub fn event_response<E: Encoder>(
    streams: Vec<Tracked>,
    mut enc: E,
    keep_alive: Option<Duration>,
    content_type: &'static str,
) -> Response {
    let mut pending = VecDeque::new();
    for i in 0..streams.len() {
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
        keep_alive,
    };
    let body = Body::from_stream(futures_util::stream::unfold(st, next_chunk));
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}
