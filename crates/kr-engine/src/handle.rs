//! The public face of the engine: submit a request, get a stream of events; drop the stream
//! to abort. Tokenisation and templating run on the caller's thread, never the engine's.

use crate::engine::Command;
use crate::error::{EngineError, Result};
use crate::grammar::GrammarCompiler;
use crate::sampler::TokenLogprobs;
use crate::stats::EngineStats;
use crate::validate::{RequestDraft, ValidatedRequest};
use kr_core::{FinishReason, PolicyConfig, Priority, RequestId, SamplingParams};
use kr_model::{ChatContext, ChatMessage, ChatTemplate, ModelConfig, Tokenizer};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc::UnboundedReceiver;

/// What to generate from.
#[derive(Debug, Clone)]
pub enum Prompt {
    /// Raw text, tokenised as is (BOS added when the model asks for it).
    Text(String),
    /// A conversation rendered through the model's chat template.
    Chat(Vec<ChatMessage>),
    /// A conversation rendered with tools and extra template variables.
    Conversation(Vec<ChatMessage>, ChatContext),
    /// Token ids, used as given.
    Tokens(Vec<u32>),
}

#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    pub params: SamplingParams,
}

/// What a request may ask for beyond its sampling parameters ([`EngineHandle::submit_with`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestOptions {
    /// Return the logprob of every prompt token given the ones before it, with this many
    /// alternatives (0..=20); see [`Event::Token::prompt_logprobs`]. Costs a logit row per
    /// prompt token, and a prompt prefix found in the prefix cache is recomputed for it.
    pub prompt_logprobs: Option<u32>,
    /// Scheduling priority: urgent requests skip any admission window; waiting
    /// requests start by priority, aged while they wait.
    pub priority: Priority,
    /// Output held to a JSON schema, regex, grammar or choice list ([`crate::grammar`]).
    pub constraint: Option<crate::grammar::Constraint>,
    /// Make this an embedding request: the prompt runs with this pooling and the stream's
    /// one event is [`Event::Embedding`] (the sampling parameters are not used).
    pub embed: Option<crate::engine::embed::Pooling>,
}

/// Token counts of a finished request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub cached_prompt_tokens: usize,
}

/// One event of a request's stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A generated token and the text it completes (may be empty while a character or a
    /// possible stop string is held back).
    Token {
        id: u32,
        text: String,
        logprobs: Option<TokenLogprobs>,
        /// Only on the first token of a request that asked for prompt logprobs: one entry
        /// per prompt token, `None` for the first (nothing precedes it), then the logprob of
        /// each prompt token given the ones before it (raw model distribution).
        prompt_logprobs: Option<Vec<Option<TokenLogprobs>>>,
        /// No token follows: the request's [`Event::Finished`] is the next event (already
        /// sent, or sent right after), so a consumer may wait for it to label this token.
        last: bool,
    },
    /// The last event of a successful request.
    Finished { reason: FinishReason, usage: Usage },
    /// The only event of a successful embedding request ([`RequestOptions::embed`]): the
    /// pooled, L2-normalised hidden state of the prompt.
    Embedding { vector: Vec<f32>, usage: Usage },
    /// The request failed; no more events follow.
    Error(String),
}

/// Static facts about the loaded model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub name: String,
    pub config: ModelConfig,
    pub max_model_len: usize,
    pub num_kv_blocks: usize,
    pub block_size: usize,
    pub weight_bytes: usize,
    /// How embedding requests pool the prompt's hidden states.
    pub pooling: crate::engine::embed::Pooling,
    /// Where it runs, in words (`cpu (f32)`, the GPU's name and dtype).
    pub device: String,
}

/// A cheap, cloneable handle on a running engine.
#[derive(Clone)]
pub struct EngineHandle {
    pub(crate) inbox: Sender<Command>,
    pub(crate) tokenizer: Arc<Tokenizer>,
    pub(crate) template: Option<Arc<ChatTemplate>>,
    pub(crate) info: Arc<ModelInfo>,
    pub(crate) stats: Arc<EngineStats>,
    pub(crate) next_id: Arc<AtomicU64>,
    /// Stops new requests while the engine's steps keep failing (`supervise.rs`).
    pub(crate) breaker: Arc<crate::engine::supervise::Breaker>,
    /// The model's grammar compiler, built on the first constrained request.
    pub(crate) grammars: Arc<std::sync::OnceLock<Result<Arc<GrammarCompiler>, String>>>,
}

impl EngineHandle {
    /// Whether `other` is a handle on the same running engine.
    pub fn same_engine(&self, other: &EngineHandle) -> bool {
        Arc::ptr_eq(&self.info, &other.info)
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The model's grammar compiler (built once, on first use: ~0.1–0.3 s for a 128k vocabulary).
    pub fn grammar_compiler(&self) -> Result<Arc<GrammarCompiler>> {
        self.grammars
            .get_or_init(|| {
                GrammarCompiler::new(&self.tokenizer, self.info.config.vocab_size)
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(EngineError::Config)
    }
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }
    pub fn has_chat_template(&self) -> bool {
        self.template.is_some()
    }

    /// The chat template's Jinja source (to recognise its tool-call format).
    pub fn chat_template_source(&self) -> Option<&str> {
        self.template.as_deref().map(ChatTemplate::source)
    }

    /// Renders a conversation with the model's chat template, opening the assistant turn.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String> {
        self.render_chat_with(messages, &ChatContext::default())
    }

    /// [`EngineHandle::render_chat`] with tools and extra template variables.
    pub fn render_chat_with(&self, messages: &[ChatMessage], ctx: &ChatContext) -> Result<String> {
        let t = self.template.as_ref().ok_or(EngineError::NoChatTemplate)?;
        Ok(t.render_with(messages, true, ctx)?)
    }

    /// Turns a prompt into token ids.
    pub fn tokenize_prompt(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        match prompt {
            Prompt::Tokens(ids) => Ok(ids.clone()),
            Prompt::Text(text) => Ok(self.tokenizer.encode(text, self.tokenizer.add_bos)?),
            Prompt::Chat(messages) => {
                let (text, bos) = self.chat_text(messages)?;
                Ok(self.tokenizer.encode(&text, bos)?)
            }
            Prompt::Conversation(messages, ctx) => {
                let (text, bos) = self.chat_text_with(messages, ctx)?;
                Ok(self.tokenizer.encode(&text, bos)?)
            }
        }
    }

    /// A conversation rendered through the chat template, and whether BOS goes before it
    /// when encoding: only when the model wants one and the template did not write it.
    pub fn chat_text(&self, messages: &[ChatMessage]) -> Result<(String, bool)> {
        self.chat_text_with(messages, &ChatContext::default())
    }

    /// [`EngineHandle::chat_text`] with tools and extra template variables.
    pub fn chat_text_with(
        &self,
        messages: &[ChatMessage],
        ctx: &ChatContext,
    ) -> Result<(String, bool)> {
        let text = self.render_chat_with(messages, ctx)?;
        let tk = &self.tokenizer;
        let bos_in_text = tk
            .bos_id
            .and_then(|b| tk.id_to_token(b))
            .is_some_and(|b| text.starts_with(&b));
        Ok((text, tk.add_bos && !bos_in_text))
    }

    /// Tokenises, validates and queues a request. The returned stream yields its events;
    /// dropping it before the end aborts the request and frees its KV blocks.
    pub fn submit(&self, req: GenerateRequest) -> Result<RequestStream> {
        self.submit_with(req, RequestOptions::default())
    }

    /// [`EngineHandle::submit`] with options (prompt logprobs, priority): tokenises the
    /// prompt, validates the request ([`EngineHandle::validate`], no cap beyond the
    /// model's) and queues it.
    pub fn submit_with(&self, req: GenerateRequest, opts: RequestOptions) -> Result<RequestStream> {
        let draft = RequestDraft {
            prompt: self.tokenize_prompt(&req.prompt)?,
            max_tokens: Some(req.params.max_tokens),
            params: req.params,
            options: opts,
        };
        self.submit_validated(self.validate(draft, u32::MAX)?)
    }

    /// An embedding request for `prompt` (the model's pooling; see [`RequestOptions::embed`]),
    /// for [`EngineHandle::validate`]: it asks for one token, which is never sampled, so a
    /// prompt fits when it leaves one slot of the context window.
    pub fn embedding_draft(&self, prompt: Vec<u32>) -> RequestDraft {
        RequestDraft {
            prompt,
            params: SamplingParams {
                temperature: 0.0,
                max_tokens: 1,
                ..SamplingParams::default()
            },
            max_tokens: Some(1),
            options: RequestOptions {
                embed: Some(self.info.pooling),
                ..RequestOptions::default()
            },
        }
    }

    /// Embeds `prompt` and waits: its pooled, L2-normalised hidden state and token counts.
    pub async fn embed(&self, prompt: Vec<u32>) -> Result<(Vec<f32>, Usage)> {
        let req = self.validate(self.embedding_draft(prompt), u32::MAX)?;
        let mut stream = self.submit_validated(req)?;
        match stream.next().await {
            Some(Event::Embedding { vector, usage }) => Ok((vector, usage)),
            Some(Event::Error(e)) => Err(EngineError::Failed(e)),
            _ => Err(EngineError::Stopped),
        }
    }

    /// Queues a request [`EngineHandle::validate`] accepted. The returned stream yields its
    /// events; dropping it before the end aborts the request and frees its KV blocks.
    pub fn submit_validated(&self, req: ValidatedRequest) -> Result<RequestStream> {
        debug_assert!(req.params.validate(self.info.config.vocab_size).is_ok());
        self.breaker
            .admit()
            .map_err(|retry_after| EngineError::CircuitOpen { retry_after })?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let prompt_len = req.prompt.len();
        self.inbox
            .send(Command::Add {
                id,
                prompt: req.prompt,
                params: req.params,
                prompt_logprobs: req.options.prompt_logprobs,
                priority: req.options.priority,
                grammar: req.grammar,
                embed: req.options.embed,
                events: tx,
            })
            .map_err(|_| EngineError::Stopped)?;
        Ok(RequestStream {
            id,
            rx,
            inbox: self.inbox.clone(),
            done: false,
            prompt_len,
        })
    }

    /// The circuit breaker's state: `Open` while failing steps keep new requests out.
    pub fn breaker_state(&self) -> crate::engine::supervise::BreakerState {
        self.breaker.state()
    }

    /// Changes the scheduler policies live (window, latency controller, aging, fast path).
    pub fn set_policy(&self, cfg: PolicyConfig) -> Result<()> {
        self.inbox
            .send(Command::SetPolicy(cfg))
            .map_err(|_| EngineError::Stopped)
    }

    /// Asks the engine thread to finish its work and exit.
    pub fn shutdown(&self) {
        let _ = self.inbox.send(Command::Shutdown(None));
    }

    /// Ends every request in the engine: each stream gets `Event::Error(reason)` and its
    /// KV blocks are freed.
    pub fn abort_all(&self, reason: &str) {
        let _ = self.inbox.send(Command::AbortAll(reason.to_string()));
    }

    /// Stops the engine after the commands already sent (aborts of dropped streams
    /// included) and waits up to `timeout` for it: the KV blocks still in use when it
    /// stopped, `None` if it did not stop in time.
    pub fn shutdown_and_wait(&self, timeout: std::time::Duration) -> Option<u64> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.inbox.send(Command::Shutdown(Some(tx))).ok()?;
        rx.recv_timeout(timeout).ok()
    }
}

/// The events of one request, usable from async code (`Stream`) or blocking code.
pub struct RequestStream {
    id: RequestId,
    rx: UnboundedReceiver<Event>,
    inbox: Sender<Command>,
    done: bool,
    pub prompt_len: usize,
}

impl RequestStream {
    pub fn id(&self) -> RequestId {
        self.id
    }

    fn observe(&mut self, ev: Option<Event>) -> Option<Event> {
        match &ev {
            Some(Event::Finished { .. }) | Some(Event::Error(_)) | None => self.done = true,
            _ => {}
        }
        ev
    }

    /// Blocks the current thread until the next event (not for use inside async code).
    pub fn next_blocking(&mut self) -> Option<Event> {
        let ev = self.rx.blocking_recv();
        self.observe(ev)
    }

    /// Waits for the next event.
    pub async fn next(&mut self) -> Option<Event> {
        let ev = self.rx.recv().await;
        self.observe(ev)
    }
}

impl futures_core::Stream for RequestStream {
    type Item = Event;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let this = self.get_mut();
        match this.rx.poll_recv(cx) {
            Poll::Ready(ev) => Poll::Ready(this.observe(ev)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.inbox.send(Command::Abort(self.id));
        }
    }
}
