//! Shared server state: the engine handle, the configuration, metrics and admission control.
//!
//! Admission: every engine request holds a [`Permit`] for its whole life. At most
//! `max_running + max_queue` permits exist; past that a request is refused with 429 before
//! anything reaches the engine, so the engine's waiting queue stays bounded.

use crate::error::ApiError;
use crate::metrics::Metrics;
use kr_engine::EngineHandle;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Server settings (the engine has its own `EngineConfig`).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Requests the engine runs at once (should match the engine's `max_num_seqs`).
    pub max_running: usize,
    /// Requests allowed to wait beyond `max_running`; more get 429.
    pub max_queue: usize,
    /// Largest `max_tokens` a request may ask for; also the default when it asks for none.
    pub max_tokens_cap: u32,
    /// Bearer keys accepted on every route but the probes; empty means no auth.
    pub api_keys: Vec<String>,
    /// Reject unknown request fields instead of ignoring them.
    pub strict: bool,
    /// Interval of SSE keep-alive comments while a stream has nothing to send.
    pub keep_alive: Duration,
    /// Streamed tokens are sent in runs of this many (1 = every token).
    pub stream_interval: usize,
    /// Longest a request may take from arrival to its last token; `None` = no limit.
    pub request_timeout: Option<Duration>,
    /// Extra names the model answers to (besides its file stem).
    pub aliases: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 << 20,
            max_running: 64,
            max_queue: 256,
            max_tokens_cap: 4096,
            api_keys: Vec::new(),
            strict: false,
            keep_alive: Duration::from_secs(15),
            stream_interval: 1,
            request_timeout: None,
            aliases: Vec::new(),
        }
    }
}

/// Counts requests in flight in the server.
#[derive(Debug)]
pub struct Admission {
    in_flight: AtomicUsize,
    capacity: usize,
}

/// One admitted engine request; releases its slot on drop.
#[derive(Debug)]
pub struct Permit(Arc<Admission>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            capacity,
        })
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Takes `n` slots at once, or none (429) when they would exceed the capacity.
    pub fn try_acquire(self: &Arc<Self>, n: usize) -> Result<Vec<Permit>, ApiError> {
        let overloaded = || ApiError::Overloaded {
            capacity: self.capacity,
        };
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                (cur + n <= self.capacity).then_some(cur + n)
            })
            .map_err(|_| overloaded())?;
        Ok((0..n).map(|_| Permit(self.clone())).collect())
    }
}

pub struct Inner {
    pub engine: EngineHandle,
    pub cfg: ServerConfig,
    pub metrics: Metrics,
    pub admission: Arc<Admission>,
    /// Unix time the server started (the `created` of /v1/models).
    pub started: u64,
}

/// Cheap to clone; handed to every handler.
pub type AppState = Arc<Inner>;

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Inner {
    pub fn new(engine: EngineHandle, cfg: ServerConfig) -> AppState {
        let admission = Admission::new(cfg.max_running + cfg.max_queue);
        Arc::new(Inner {
            engine,
            cfg,
            metrics: Metrics::default(),
            admission,
            started: unix_now(),
        })
    }

    /// How streamed bodies are paced; NDJSON (Ollama) has no keep-alive line.
    pub fn pacing(&self, keep_alive: bool, arrived: Instant) -> crate::stream::Pacing {
        crate::stream::Pacing {
            keep_alive: keep_alive.then_some(self.cfg.keep_alive),
            interval: self.cfg.stream_interval,
            deadline: self.cfg.request_timeout.map(|d| arrived + d),
        }
    }

    /// The name the loaded model is served under.
    pub fn model_name(&self) -> &str {
        &self.engine.info().name
    }

    /// Accepts the model's name (any case, with an optional `:latest` tag, and without the
    /// `builtin:` prefix of a built-in model) or an alias.
    pub fn check_model(&self, requested: &str) -> Result<(), ApiError> {
        let name = self.model_name();
        let short = name.strip_prefix("builtin:").unwrap_or(name);
        let base = requested.strip_suffix(":latest").unwrap_or(requested);
        let ok = base.eq_ignore_ascii_case(name)
            || base.eq_ignore_ascii_case(short)
            || self.cfg.aliases.iter().any(|a| a == requested || a == base);
        if ok {
            Ok(())
        } else {
            Err(ApiError::unknown_model(requested, name))
        }
    }
}
