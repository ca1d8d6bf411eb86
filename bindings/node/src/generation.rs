//! One running generation, as JavaScript pulls it: `next()` resolves with the next chunk
//! (or `null` at the end) without blocking Node's event loop; `cancel()` aborts the request
//! at once, whether or not a `next()` is pending, and frees its KV blocks.
//!
//! Invariant: the engine stream is dropped (aborting the request) exactly when the
//! generation ends, is cancelled, or is garbage-collected.

use kr_engine::{Event, FinishReason, ModelLease, RequestStream, Usage};
use napi_derive::napi;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::{Mutex, Notify};

/// One step of a generation.
#[napi(object)]
pub struct Chunk {
    /// The text this token completes (may be empty while a character or a possible stop
    /// string is held back).
    pub text: String,
    pub token_id: u32,
    /// Its log-probability, when the request asked for `logprobs`.
    pub logprob: Option<f64>,
    /// On the last chunk: `stop`, `length`, …
    pub finish_reason: Option<String>,
    /// On the last chunk: token counts.
    pub usage: Option<ChunkUsage>,
}

#[napi(object)]
pub struct ChunkUsage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub cached_prompt_tokens: u32,
}

impl From<Usage> for ChunkUsage {
    fn from(u: Usage) -> Self {
        let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        Self {
            prompt_tokens: n(u.prompt_tokens),
            completion_tokens: n(u.completion_tokens),
            cached_prompt_tokens: n(u.cached_prompt_tokens),
        }
    }
}

fn reason_name(r: FinishReason) -> String {
    serde_json::to_value(r)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{r:?}").to_lowercase())
}

/// A generation in flight (see the module header).
#[napi]
pub struct NativeGeneration {
    stream: Arc<Mutex<Option<(RequestStream, ModelLease)>>>,
    cancelled: Arc<AtomicBool>,
    wake: Arc<Notify>,
}

impl NativeGeneration {
    pub fn new(stream: RequestStream, lease: ModelLease) -> Self {
        Self {
            stream: Arc::new(Mutex::new(Some((stream, lease)))),
            cancelled: Arc::new(AtomicBool::new(false)),
            wake: Arc::new(Notify::new()),
        }
    }
}

#[napi]
impl NativeGeneration {
    /// The next chunk, or `null` when the generation has ended (or was cancelled).
    #[napi]
    pub async fn next(&self) -> napi::Result<Option<Chunk>> {
        let mut slot = self.stream.lock().await;
        let Some((stream, _)) = slot.as_mut() else {
            return Ok(None);
        };
        let event = tokio::select! {
            ev = stream.next() => ev,
            _ = self.wake.notified() => None,
        };
        if self.cancelled.load(Ordering::Acquire) {
            *slot = None;
            return Ok(None);
        }
        let chunk = match event {
            Some(Event::Token {
                id,
                text,
                logprobs,
                last,
                ..
            }) => {
                let mut chunk = Chunk {
                    text,
                    token_id: id,
                    logprob: logprobs.map(|l| l.logprob as f64),
                    finish_reason: None,
                    usage: None,
                };
                if last {
                    // The engine sends the end right after its last token.
                    let end = stream.next().await;
                    *slot = None;
                    match end {
                        Some(Event::Finished { reason, usage }) => {
                            chunk.finish_reason = Some(reason_name(reason));
                            chunk.usage = Some(usage.into());
                        }
                        Some(Event::Error(e)) => return Err(napi::Error::from_reason(e)),
                        _ => {
                            return Err(napi::Error::from_reason(
                                "the engine stopped before the generation ended",
                            ))
                        }
                    }
                }
                Some(chunk)
            }
            Some(Event::Error(e)) => {
                *slot = None;
                return Err(napi::Error::from_reason(e));
            }
            Some(Event::Finished { .. }) | Some(Event::Embedding { .. }) | None => {
                *slot = None;
                None
            }
        };
        Ok(chunk)
    }

    /// Stops the generation now: a pending `next()` resolves with `null`, the engine drops
    /// the request and frees its KV blocks. Calling it again does nothing.
    #[napi]
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        self.wake.notify_one();
        if let Ok(mut slot) = self.stream.try_lock() {
            *slot = None;
        }
    }
}
