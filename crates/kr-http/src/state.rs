//! Server state: the configuration, metrics, admission control and the models ([`Shared`]),
//! and each request's view of it with the engine of the model it names ([`Inner`]).
//!
//! Permits: every engine request holds a [`Permit`] for its whole life. At most
//! `max_running + max_queue` permits exist; past that a request is refused with 429 before
//! anything reaches the engine, so the engine's waiting queue stays bounded.

use crate::config::{Config, Effective, Inputs};
use crate::error::ApiError;
use crate::listen::ConnLimits;
use crate::metrics::Metrics;
use crate::tokenize::TokenizeBatcher;
use kr_engine::{EngineHandle, KeepAlive, ModelLease, ModelPool, SamplingDefaults};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
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
    /// Bearer keys accepted on every route but the probes and `/`; empty means no auth.
    pub api_keys: Vec<String>,
    /// Reject unknown request fields instead of ignoring them.
    pub strict: bool,
    /// /metrics also exports vLLM-named queue and KV gauges (for inference gateways).
    pub vllm_metrics: bool,
    /// Interval of SSE keep-alive comments while a stream has nothing to send.
    pub keep_alive: Duration,
    /// Streamed tokens are sent in runs of this many (1 = every token).
    pub stream_interval: usize,
    /// A run is sent once its first token has waited this long, however short it is.
    pub stream_interval_time: Option<Duration>,
    /// Longest a request may take from arrival to its last token; `None` = no limit.
    pub request_timeout: Option<Duration>,
    /// Extra names the model answers to (besides its file stem).
    pub aliases: Vec<String>,
    /// Key for /admin/*; without it /admin is open only when no API key is set (else 403).
    pub admin_key: Option<String>,
    /// The resolved config with its sources (GET /admin/config); `None`: built from these
    /// fields, every source `default`.
    pub effective: Option<Effective>,
    /// What the config was resolved from, re-read on SIGHUP when it names a file.
    pub inputs: Option<Inputs>,
    /// Connection limits and the shutdown deadline.
    pub conn: ConnLimits,
    /// Longest a request body may take to arrive.
    pub body_read_timeout: Duration,
}

impl ServerConfig {
    /// The server settings of `c` (the engine's are taken elsewhere).
    pub fn from_config(c: &Config) -> Self {
        let secs = Duration::from_secs_f64;
        let mut s = Self {
            max_body_bytes: c.max_body_bytes,
            max_running: c.max_running,
            conn: ConnLimits {
                max_connections: c.max_connections,
                header_read_timeout: secs(c.header_read_timeout),
                max_header_bytes: c.max_header_bytes,
                max_headers: c.max_headers,
                shutdown_timeout: secs(c.shutdown_timeout),
            },
            body_read_timeout: secs(c.body_read_timeout),
            ..Self::default()
        };
        s.apply(c);
        s
    }

    /// Takes the runtime-safe values of `c`.
    pub fn apply(&mut self, c: &Config) {
        self.max_queue = c.max_queue;
        self.max_tokens_cap = c.max_tokens_cap;
        self.stream_interval = c.stream_interval.max(1);
        self.stream_interval_time =
            (c.stream_interval_ms > 0).then(|| Duration::from_millis(c.stream_interval_ms));
        self.strict = c.strict;
        self.vllm_metrics = c.vllm_metrics;
        self.request_timeout = (c.request_timeout > 0.0)
            .then(|| Duration::try_from_secs_f64(c.request_timeout).ok())
            .flatten();
    }

    /// The config these fields stand for, every source `default`.
    fn effective_guess(&self) -> Effective {
        let mut e = Effective::default_config();
        let c = &mut e.config;
        c.max_body_bytes = self.max_body_bytes;
        c.max_running = self.max_running;
        c.max_queue = self.max_queue;
        c.max_tokens_cap = self.max_tokens_cap;
        c.stream_interval = self.stream_interval;
        c.stream_interval_ms = self
            .stream_interval_time
            .map_or(0, |d| d.as_millis().try_into().unwrap_or(u64::MAX));
        c.strict = self.strict;
        c.vllm_metrics = self.vllm_metrics;
        c.request_timeout = self.request_timeout.map_or(0.0, |d| d.as_secs_f64());
        e
    }
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
            vllm_metrics: false,
            keep_alive: Duration::from_secs(15),
            stream_interval: 1,
            stream_interval_time: None,
            request_timeout: None,
            aliases: Vec::new(),
            admin_key: None,
            effective: None,
            inputs: None,
            conn: ConnLimits::default(),
            body_read_timeout: Duration::from_secs(30),
        }
    }
}

/// Counts requests in flight in the server.
#[derive(Debug)]
pub struct RequestPermits {
    in_flight: AtomicUsize,
    capacity: AtomicUsize,
}

/// One admitted engine request; releases its slot on drop.
#[derive(Debug)]
pub struct Permit(Arc<RequestPermits>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl RequestPermits {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            capacity: AtomicUsize::new(capacity),
        })
    }

    /// Changes the capacity (max_queue changed live); requests in flight keep their slots.
    pub fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity, Ordering::Release);
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Takes `n` slots at once, or none (429) when they would exceed the capacity.
    pub fn try_acquire(self: &Arc<Self>, n: usize) -> Result<Vec<Permit>, ApiError> {
        let capacity = self.capacity.load(Ordering::Acquire);
        let overloaded = || ApiError::Overloaded { capacity };
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                (cur + n <= capacity).then_some(cur + n)
            })
            .map_err(|_| overloaded())?;
        Ok((0..n).map(|_| Permit(self.clone())).collect())
    }
}

/// The settings in force: swapped whole, so a reader sees one consistent version.
struct SettingsInForce {
    cfg: Arc<ServerConfig>,
    effective: Effective,
}

/// What every request shares, whatever model it names: settings, metrics, admission, the
/// models and their tokenize batchers.
pub struct Shared {
    live: RwLock<SettingsInForce>,
    pub metrics: Metrics,
    pub permits: Arc<RequestPermits>,
    /// Unix time the server started (the `created` of /v1/models).
    pub started: u64,
    /// Identical deterministic requests in flight share one generation.
    pub coalescer: Arc<crate::coalesce::Coalescer>,
    /// The models this server serves (loaded on first use, see `kr_engine::pool`).
    pub pool: ModelPool,
    /// Each loaded engine's tokenize batcher (rebuilt when a model is loaded again).
    batchers: Mutex<HashMap<String, (EngineHandle, Arc<TokenizeBatcher>)>>,
}

/// The server's state, handed to every handler.
pub type Server = Arc<Shared>;

/// One request's view: the engine of the model it names (held loaded while the request
/// lives) and everything shared.
pub struct Inner {
    pub engine: EngineHandle,
    /// Every prompt tokenisation of this model goes through it (coalesced batch encodes).
    pub tokenizer: Arc<TokenizeBatcher>,
    pub shared: Server,
    /// The configured name of the model (what `/api/ps` lists).
    name: String,
    /// The model's sampling defaults (a request's unset values).
    pub sampling: SamplingDefaults,
    _lease: Option<Arc<ModelLease>>,
}

impl std::ops::Deref for Inner {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.shared
    }
}

/// A request's state (see [`Inner`]); cheap to clone.
pub type AppState = Arc<Inner>;

/// Sends the scheduler policies of `c` to the engine (they are runtime-safe).
fn push_policy(engine: &EngineHandle, c: &Config) {
    if engine.set_policy(c.policy()).is_err() {
        tracing::warn!("the engine has stopped; scheduler policies not applied");
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Inner {
    /// A server for one running engine (what `serve` and the tests start).
    pub fn new(engine: EngineHandle, cfg: ServerConfig) -> Server {
        Shared::new(ModelPool::single(engine), cfg)
    }

    /// The name the model is served under.
    pub fn model_name(&self) -> &str {
        &self.name
    }
}

impl Shared {
    /// A server for the models of `pool`.
    pub fn new(pool: ModelPool, cfg: ServerConfig) -> Server {
        let permits = RequestPermits::new(cfg.max_running + cfg.max_queue);
        // A resolved config brings its scheduler policies; without one the engines keep
        // those they were started with.
        if let Some(e) = &cfg.effective {
            for (_, engine) in pool.loaded() {
                push_policy(&engine, &e.config);
            }
        }
        let effective = cfg
            .effective
            .clone()
            .unwrap_or_else(|| cfg.effective_guess());
        Arc::new(Shared {
            live: RwLock::new(SettingsInForce {
                cfg: Arc::new(cfg),
                effective,
            }),
            metrics: Metrics::default(),
            permits,
            started: unix_now(),
            coalescer: Arc::default(),
            pool,
            batchers: Mutex::default(),
        })
    }

    /// The state of a request for `requested` (a name, `:latest` tag or alias), loading the
    /// model first if it is not loaded (off the async threads); `keep_alive` sets how long
    /// it stays loaded after this request. 404 naming the model if it is not configured;
    /// 400 if it does not fit the memory budget; 503 if the memory stays busy.
    pub async fn model(
        self: &Arc<Self>,
        requested: &str,
        keep_alive: Option<KeepAlive>,
    ) -> Result<AppState, ApiError> {
        let pool = self.pool.clone();
        let name = requested.to_string();
        let lease = tokio::task::spawn_blocking(move || pool.acquire(&name, keep_alive))
            .await
            .map_err(|e| ApiError::Internal(format!("model load task failed: {e}")))??;
        let engine = (*lease).clone();
        let tokenizer = self.batcher(lease.name(), &engine);
        Ok(Arc::new(Inner {
            engine,
            tokenizer,
            shared: self.clone(),
            name: lease.name().to_string(),
            sampling: lease.sampling(),
            _lease: Some(Arc::new(lease)),
        }))
    }

    /// The tokenize batcher of `engine` (a new one when the model was loaded again).
    fn batcher(&self, name: &str, engine: &EngineHandle) -> Arc<TokenizeBatcher> {
        let mut map = self.batchers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((e, b)) = map.get(name) {
            if e.same_engine(engine) {
                return b.clone();
            }
        }
        let b = Arc::new(TokenizeBatcher::new(
            engine.clone(),
            self.metrics.tokenize.clone(),
        ));
        map.insert(name.to_string(), (engine.clone(), b.clone()));
        b
    }

    /// The model a request that names none is for: the first configured.
    pub fn default_model(&self) -> String {
        self.pool
            .specs()
            .first()
            .map_or_else(String::new, |s| s.name.clone())
    }

    /// The server settings in force now (read once per request).
    pub fn cfg(&self) -> Arc<ServerConfig> {
        let live = self.live.read().unwrap_or_else(|e| e.into_inner());
        live.cfg.clone()
    }

    /// The effective config and its sources.
    pub fn effective(&self) -> Effective {
        let live = self.live.read().unwrap_or_else(|e| e.into_inner());
        live.effective.clone()
    }

    /// Puts `next` in force: its runtime-safe values, all at once.
    pub fn apply(&self, next: Effective) {
        let mut live = self.live.write().unwrap_or_else(|e| e.into_inner());
        let mut cfg = (*live.cfg).clone();
        cfg.apply(&next.config);
        self.permits.set_capacity(cfg.max_running + cfg.max_queue);
        if next.config.policy() != live.effective.config.policy() {
            for (_, engine) in self.pool.loaded() {
                push_policy(&engine, &next.config);
            }
        }
        live.cfg = Arc::new(cfg);
        live.effective = next;
    }

    /// How streamed bodies are paced; NDJSON (Ollama) has no keep-alive line.
    pub fn pacing(&self, keep_alive: bool, arrived: Instant) -> crate::stream::Pacing {
        let cfg = self.cfg();
        crate::stream::Pacing {
            keep_alive: keep_alive.then_some(cfg.keep_alive),
            interval: cfg.stream_interval,
            max_hold: cfg.stream_interval_time,
            deadline: cfg.request_timeout.map(|d| arrived + d),
        }
    }
}
