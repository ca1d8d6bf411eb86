//! POST /tokenize and /detokenize, vLLM's shapes: `{prompt | messages}` →
//! `{tokens, count, max_model_len}`; `{tokens}` → `{prompt}`.
//!
//! Every prompt the server tokenises (these routes and the generating ones) goes through
//! one [`TokenizeBatcher`], mlx-serving's request multiplexer: requests queue in a
//! channel; one worker task takes whatever is waiting (up to [`MAX_BATCH`]) and encodes it
//! with one batch call on the blocking pool, then answers each. There is no waiting
//! window: a lone request is encoded at once, and requests that arrive while a batch is
//! being encoded form the next batch. Invariant: a batched answer equals what
//! `EngineHandle::tokenize_prompt` gives for the same prompt (tested).
//! /detokenize runs directly on the blocking pool.

use crate::error::{ApiError, Result};
use crate::extract::{check_unknown, ApiJson};
use crate::generate;
use crate::openai::chat::MessageIn;
use crate::state::{AppState, Server};
use axum::extract::State;
use axum::Json;
use kr_engine::{ChatMessage, EngineError, EngineHandle, Prompt};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use tokio::sync::{mpsc, oneshot};

/// Most prompts encoded in one batch.
pub const MAX_BATCH: usize = 64;

/// Batches and prompts the batcher has encoded (for /metrics).
#[derive(Debug, Default)]
pub struct TokenizeCounters {
    pub batches: AtomicU64,
    pub requests: AtomicU64,
}

type Reply = oneshot::Sender<kr_engine::Result<Vec<u32>>>;

/// Text to encode, and whether BOS goes first.
struct EncodeJob {
    text: String,
    bos: bool,
}

/// Coalesces concurrent tokenisations into batch encodes (see the module header).
pub struct TokenizeBatcher {
    engine: EngineHandle,
    /// Chat renders at once (each may take a child process and its time limit); more
    /// wait their turn.
    renders: Arc<tokio::sync::Semaphore>,
    /// Started on first use, from inside the runtime.
    tx: OnceLock<mpsc::UnboundedSender<(EncodeJob, Reply)>>,
    counters: Arc<TokenizeCounters>,
}

impl TokenizeBatcher {
    pub fn new(engine: EngineHandle, counters: Arc<TokenizeCounters>) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            engine,
            renders: Arc::new(tokio::sync::Semaphore::new(cores.max(2))),
            tx: OnceLock::new(),
            counters,
        }
    }

    /// Tokenises `prompt`, batched with whatever else waits. A conversation is rendered
    /// first, on its own blocking task, so a slow chat template (bounded by its sandbox
    /// limits) delays only its own request, never a batch.
    pub async fn tokenize(&self, prompt: Prompt) -> kr_engine::Result<Vec<u32>> {
        let job = match prompt {
            Prompt::Tokens(ids) => return Ok(ids),
            Prompt::Text(text) => EncodeJob {
                bos: self.engine.tokenizer().add_bos,
                text,
            },
            Prompt::Chat(messages) => {
                return Box::pin(self.tokenize(Prompt::Conversation(messages, Default::default())))
                    .await
            }
            Prompt::Conversation(messages, ctx) => {
                let _turn = self
                    .renders
                    .acquire()
                    .await
                    .map_err(|_| EngineError::Stopped)?;
                let e = self.engine.clone();
                tokio::task::spawn_blocking(move || chat_text(&e, &messages, &ctx))
                    .await
                    .map_err(|e| EngineError::Config(format!("template task failed: {e}")))??
            }
        };
        let tx = self.tx.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(worker(self.engine.clone(), rx, self.counters.clone()));
            tx
        });
        let (reply, answer) = oneshot::channel();
        tx.send((job, reply)).map_err(|_| EngineError::Stopped)?;
        answer.await.map_err(|_| EngineError::Stopped)?
    }
}

/// Takes every waiting request (up to [`MAX_BATCH`]), encodes them together, answers each;
/// ends when the batcher is dropped.
async fn worker(
    engine: EngineHandle,
    mut rx: mpsc::UnboundedReceiver<(EncodeJob, Reply)>,
    counters: Arc<TokenizeCounters>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        counters.batches.fetch_add(1, Relaxed);
        counters.requests.fetch_add(batch.len() as u64, Relaxed);
        let (jobs, replies): (Vec<EncodeJob>, Vec<Reply>) = batch.into_iter().unzip();
        let e = engine.clone();
        let results = tokio::task::spawn_blocking(move || encode_all(&e, jobs)).await;
        match results {
            Ok(results) => {
                for (reply, r) in replies.into_iter().zip(results) {
                    let _ = reply.send(r);
                }
            }
            Err(e) => {
                for reply in replies {
                    let msg = format!("tokenizer task failed: {e}");
                    let _ = reply.send(Err(EngineError::Config(msg)));
                }
            }
        }
    }
}

/// A conversation's text and whether BOS goes first, as `EngineHandle::tokenize_prompt`
/// encodes it.
fn chat_text(
    engine: &EngineHandle,
    messages: &[ChatMessage],
    ctx: &kr_engine::ChatContext,
) -> kr_engine::Result<EncodeJob> {
    let (text, bos) = engine.chat_text_with(messages, ctx)?;
    Ok(EncodeJob { text, bos })
}

/// Encodes a batch: one batch call per BOS setting; if a batch call fails, each prompt of
/// it is encoded alone so that only the bad one gets the error.
fn encode_all(engine: &EngineHandle, jobs: Vec<EncodeJob>) -> Vec<kr_engine::Result<Vec<u32>>> {
    let tk = engine.tokenizer();
    let mut out: Vec<kr_engine::Result<Vec<u32>>> = Vec::with_capacity(jobs.len());
    // groups[bos]: (index in `out`, text) of the prompts encoded with that BOS setting.
    let mut groups: [Vec<(usize, String)>; 2] = [Vec::new(), Vec::new()];
    for (i, job) in jobs.into_iter().enumerate() {
        groups[usize::from(job.bos)].push((i, job.text));
        out.push(Ok(Vec::new()));
    }
    for (bos, group) in groups.iter().enumerate() {
        let bos = bos == 1;
        let strs: Vec<&str> = group.iter().map(|(_, t)| t.as_str()).collect();
        if strs.is_empty() {
            continue;
        }
        match tk.encode_batch(&strs, bos) {
            Ok(ids) => group
                .iter()
                .zip(ids)
                .for_each(|((i, _), v)| out[*i] = Ok(v)),
            Err(_) => group.iter().for_each(|(i, t)| {
                out[*i] = tk.encode(t, bos).map_err(EngineError::from);
            }),
        }
    }
    out
}

#[derive(Debug, Deserialize)]
pub struct TokenizeRequest {
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub messages: Option<Vec<MessageIn>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
pub struct DetokenizeRequest {
    pub model: Option<String>,
    pub tokens: Vec<u32>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The state of the model a request names (the first configured when it names none).
async fn check(
    server: &Server,
    model: &Option<String>,
    extra: &Map<String, Value>,
) -> Result<AppState> {
    check_unknown(server, extra)?;
    let name = model.clone().unwrap_or_else(|| server.default_model());
    server.model(&name, None).await
}

pub async fn tokenize(
    State(server): State<Server>,
    ApiJson(req): ApiJson<TokenizeRequest>,
) -> Result<Json<Value>> {
    let state = check(&server, &req.model, &req.extra).await?;
    let prompt = match (req.prompt, req.messages) {
        (Some(p), None) => Prompt::Text(p),
        (None, Some(msgs)) => Prompt::Chat(
            msgs.iter()
                .map(|m| ChatMessage::new(&m.role, &m.text()))
                .collect(),
        ),
        _ => {
            return Err(ApiError::bad(
                "prompt",
                "send exactly one of `prompt` or `messages`",
            ))
        }
    };
    let ids = generate::tokenize(&state, prompt).await?;
    Ok(Json(json!({
        "count": ids.len(),
        "max_model_len": state.engine.info().max_model_len,
        "tokens": ids,
    })))
}

pub async fn detokenize(
    State(server): State<Server>,
    ApiJson(req): ApiJson<DetokenizeRequest>,
) -> Result<Json<Value>> {
    let state = check(&server, &req.model, &req.extra).await?;
    let vocab = state.engine.info().config.vocab_size;
    if let Some(bad) = req.tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::bad(
            "tokens",
            format!("token id {bad} is out of range: allowed 0..{vocab}"),
        ));
    }
    let engine = state.engine.clone();
    let text = tokio::task::spawn_blocking(move || engine.tokenizer().decode(&req.tokens))
        .await
        .map_err(|e| ApiError::Internal(format!("tokenizer task failed: {e}")))?
        .map_err(|e| ApiError::bad("tokens", e.to_string()))?;
    Ok(Json(json!({ "prompt": text })))
}
