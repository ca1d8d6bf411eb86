//! Several models in one process under one memory budget per device (Ollama's way): the
//! host's memory in bytes, and each GPU as a whole (a model on a GPU reserves the
//! `gpu_memory_fraction` of it that its engine sizes itself to). Each configured
//! model is an engine started on first use (or at start), kept while it is used, and
//! unloaded when its keep-alive runs out or when another model needs its room.
//!
//! Invariants:
//! - the bytes counted for the loaded models and the loads under way never exceed the
//!   budget (a model counts at its estimate, [`ModelSpec::estimated_bytes`], so what a load
//!   needs is known before it starts; what it holds once loaded is reported apart);
//! - a model with a [`ModelLease`] out (a request in flight) is never unloaded: eviction
//!   takes the least recently used idle model, and a load that finds only busy models
//!   waits for one to go idle (at most [`LOAD_WAIT`]);
//! - a model is loaded by one caller at a time; others asking for it wait for that load.

use crate::engine::{start, EngineConfig};
use crate::error::{EngineError, Result};
use crate::handle::EngineHandle;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

/// Longest a load waits for a busy model to go idle before it gives up.
pub const LOAD_WAIT: Duration = Duration::from_secs(60);

/// How long a model stays loaded after its last request (Ollama's `keep_alive`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    Forever,
    /// `For(0)` unloads it as soon as its last request ends.
    For(Duration),
}

impl KeepAlive {
    /// Ollama's forms: a number of seconds (negative: forever), or a duration string
    /// (`"5m"`, `"1h30m"`, `"45s"`, `"0"`, `"-1"`).
    pub fn parse(v: &serde_json::Value) -> std::result::Result<Self, String> {
        let bad = || {
            format!("invalid keep_alive {v}: a duration such as \"5m\", \"1h\", \"30s\", seconds, 0 (unload) or -1 (keep)")
        };
        if let Some(secs) = v.as_f64() {
            return Ok(Self::from_secs(secs));
        }
        let s = v.as_str().ok_or_else(bad)?.trim();
        if let Ok(secs) = s.parse::<f64>() {
            return Ok(Self::from_secs(secs));
        }
        let mut total = 0f64;
        let mut num = String::new();
        for c in s.chars() {
            match c {
                '0'..='9' | '.' => num.push(c),
                'h' | 'm' | 's' => {
                    let n: f64 = num.parse().map_err(|_| bad())?;
                    total += n * match c {
                        'h' => 3600.0,
                        'm' => 60.0,
                        _ => 1.0,
                    };
                    num.clear();
                }
                _ => return Err(bad()),
            }
        }
        if !num.is_empty() || s.is_empty() {
            return Err(bad());
        }
        Ok(Self::from_secs(total))
    }

    fn from_secs(secs: f64) -> Self {
        if secs < 0.0 || !secs.is_finite() {
            Self::Forever
        } else {
            Self::For(Duration::from_secs_f64(secs.min(1e9)))
        }
    }
}

/// A model's own sampling defaults: what a request that does not set a value gets (over
/// each API's own defaults).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingDefaults {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
}

impl SamplingDefaults {
    /// `base` with these defaults in place of its own.
    pub fn over(&self, base: crate::SamplingParams) -> crate::SamplingParams {
        crate::SamplingParams {
            temperature: self.temperature.unwrap_or(base.temperature),
            top_p: self.top_p.unwrap_or(base.top_p),
            top_k: self.top_k.unwrap_or(base.top_k),
            min_p: self.min_p.unwrap_or(base.min_p),
            repetition_penalty: self.repetition_penalty.unwrap_or(base.repetition_penalty),
            ..base
        }
    }
}

/// The default memory budget of a pool: 80% of the machine's memory (no limit when
/// `/proc/meminfo` cannot be read).
pub fn default_memory_budget() -> u64 {
    let total_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok()
    });
    total_kib.map_or(u64::MAX, |k| k * 1024 / 10 * 8)
}

/// One model the pool may serve.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// The name requests use.
    pub name: String,
    /// Other names it answers to.
    pub aliases: Vec<String>,
    pub engine: EngineConfig,
    /// Its own keep-alive; `None` takes the pool's.
    pub keep_alive: Option<KeepAlive>,
    /// Never unloaded (a model the pool was handed running, which it could not load again).
    pub pinned: bool,
    /// Its sampling defaults.
    pub sampling: SamplingDefaults,
}

impl ModelSpec {
    pub fn new(name: impl Into<String>, engine: EngineConfig) -> Self {
        Self {
            name: name.into(),
            aliases: Vec::new(),
            engine,
            keep_alive: None,
            pinned: false,
            sampling: SamplingDefaults::default(),
        }
    }

    /// The device the model runs on, and what it reserves there: bytes of host memory
    /// ([`Self::estimated_bytes`]), or millionths of its GPU.
    fn need(&self) -> (Device, u64) {
        match self.engine.device.resolve() {
            crate::DeviceChoice::Cuda(n) => {
                let share = self.engine.gpu_memory_fraction.clamp(0.0, 1.0);
                (Device::Gpu(n), (share * GPU_WHOLE as f64) as u64)
            }
            _ => (Device::Host, self.estimated_bytes()),
        }
    }

    fn answers_to(&self, requested: &str) -> bool {
        let base = requested.strip_suffix(":latest").unwrap_or(requested);
        let short = self.name.strip_prefix("builtin:").unwrap_or(&self.name);
        base.eq_ignore_ascii_case(&self.name)
            || base.eq_ignore_ascii_case(short)
            || self.aliases.iter().any(|a| a == requested || a == base)
    }

    /// The memory a load of this model is counted at before it is loaded: the weights'
    /// files plus the KV cache it asks for.
    pub fn estimated_bytes(&self) -> u64 {
        file_bytes(&self.engine.model) + ((self.engine.kv_cache_mib as u64) << 20)
    }
}

fn file_bytes(path: &Path) -> u64 {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => std::fs::read_dir(path)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

/// Where a model's memory is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Device {
    Host,
    Gpu(usize),
}

/// A whole GPU, in the millionths GPU reservations count in.
const GPU_WHOLE: u64 = 1_000_000;

/// A loaded model's state.
struct Slot {
    device: Device,
    handle: EngineHandle,
    /// What it counts against the budget, and what it holds once loaded.
    reserved: u64,
    bytes: u64,
    active: usize,
    last_used: Instant,
    /// When it unloads once idle; `None`: never.
    expires: Option<Instant>,
    expires_wall: Option<SystemTime>,
    pinned: bool,
}

#[derive(Default)]
struct State {
    loaded: HashMap<String, Slot>,
    /// Models being loaded, with what they reserve and where.
    loading: HashMap<String, (Device, u64)>,
    unloading: HashSet<String>,
}

impl State {
    fn used(&self, on: Device) -> u64 {
        let loaded = self.loaded.values().filter(|s| s.device == on);
        let loading = self.loading.values().filter(|(d, _)| *d == on);
        loaded.map(|s| s.reserved).sum::<u64>() + loading.map(|(_, n)| n).sum::<u64>()
    }
}

struct Inner {
    /// The configured models; [`ModelPool::add`] appends (a model pulled while serving).
    specs: std::sync::RwLock<Vec<ModelSpec>>,
    budget: u64,
    default_keep_alive: KeepAlive,
    state: Mutex<State>,
    changed: Condvar,
    loads: AtomicU64,
    evictions: AtomicU64,
}

/// What [`ModelPool::status`] reports of one configured model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelStatus {
    pub name: String,
    pub path: String,
    pub loaded: bool,
    /// Memory it holds (measured once loaded; the estimate otherwise).
    pub bytes: u64,
    /// Requests in flight on it.
    pub active: usize,
    /// When it unloads if it stays idle; `None`: it does not expire.
    #[serde(skip)]
    pub expires_at: Option<SystemTime>,
}

/// The models of one server (see the module header). Cheap to clone.
#[derive(Clone)]
pub struct ModelPool {
    inner: Arc<Inner>,
}

/// A model in use: it stays loaded while a lease is out. Dropping the lease marks the
/// model idle (its keep-alive starts).
pub struct ModelLease {
    inner: Arc<Inner>,
    name: String,
    handle: EngineHandle,
    keep_alive: KeepAlive,
    sampling: SamplingDefaults,
}

impl std::ops::Deref for ModelLease {
    type Target = EngineHandle;
    fn deref(&self) -> &EngineHandle {
        &self.handle
    }
}

impl ModelLease {
    /// The configured name of the model (the one `/api/ps` lists).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The model's sampling defaults.
    pub fn sampling(&self) -> SamplingDefaults {
        self.sampling
    }
}

impl Drop for ModelLease {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        let Some(slot) = st.loaded.get_mut(&self.name) else {
            return;
        };
        slot.active = slot.active.saturating_sub(1);
        slot.last_used = Instant::now();
        (slot.expires, slot.expires_wall) = match self.keep_alive {
            _ if slot.pinned => (None, None),
            KeepAlive::Forever => (None, None),
            KeepAlive::For(d) => (Some(Instant::now() + d), Some(SystemTime::now() + d)),
        };
        let unload_now =
            slot.active == 0 && !slot.pinned && self.keep_alive == KeepAlive::For(Duration::ZERO);
        if unload_now {
            if let Some(slot) = st.loaded.remove(&self.name) {
                slot.handle.shutdown();
                tracing::info!(model = %self.name, "unloaded (keep_alive 0)");
            }
        }
        drop(st);
        self.inner.changed.notify_all();
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn specs(&self) -> std::sync::RwLockReadGuard<'_, Vec<ModelSpec>> {
        self.specs.read().unwrap_or_else(|e| e.into_inner())
    }
}

impl ModelPool {
    /// A pool of `specs` (unique names) under `budget` bytes; nothing is loaded yet.
    pub fn new(specs: Vec<ModelSpec>, budget: u64, default_keep_alive: KeepAlive) -> Result<Self> {
        let mut seen = HashSet::new();
        for s in &specs {
            if !seen.insert(s.name.to_ascii_lowercase()) {
                return Err(EngineError::Config(format!(
                    "two models are named `{}`; give each a distinct name",
                    s.name
                )));
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                specs: std::sync::RwLock::new(specs),
                budget,
                default_keep_alive,
                state: Mutex::default(),
                changed: Condvar::new(),
                loads: AtomicU64::new(0),
                evictions: AtomicU64::new(0),
            }),
        })
    }

    /// A pool serving one engine that is already running (a single-model server).
    pub fn single(handle: EngineHandle) -> Self {
        let info = handle.info();
        let mut spec = ModelSpec::new(info.name.clone(), EngineConfig::new(&info.name));
        spec.keep_alive = Some(KeepAlive::Forever);
        spec.pinned = true;
        let pool = Self::new(vec![spec], u64::MAX, KeepAlive::Forever).expect("one name");
        pool.insert_loaded(&info.name.clone(), handle);
        pool
    }

    fn insert_loaded(&self, name: &str, handle: EngineHandle) {
        let bytes = loaded_bytes(&handle);
        self.inner.lock().loaded.insert(
            name.to_string(),
            Slot {
                device: Device::Host,
                handle,
                reserved: bytes,
                bytes,
                active: 0,
                last_used: Instant::now(),
                expires: None,
                expires_wall: None,
                pinned: true,
            },
        );
    }

    /// The configured models, in order.
    pub fn specs(&self) -> Vec<ModelSpec> {
        self.inner.specs().clone()
    }

    /// Adds a model (not loaded); an error when its name is taken.
    pub fn add(&self, spec: ModelSpec) -> Result<()> {
        let mut specs = self.inner.specs.write().unwrap_or_else(|e| e.into_inner());
        if specs
            .iter()
            .any(|s| s.name.eq_ignore_ascii_case(&spec.name))
        {
            return Err(EngineError::Config(format!(
                "a model named `{}` is already served",
                spec.name
            )));
        }
        specs.push(spec);
        Ok(())
    }

    /// The configured model `requested` names (its name in any case, with an optional
    /// `:latest`, or an alias).
    pub fn resolve(&self, requested: &str) -> Option<ModelSpec> {
        let specs = self.inner.specs();
        specs.iter().find(|s| s.answers_to(requested)).cloned()
    }

    /// The model `name` resolves to; an error naming the available ones otherwise.
    fn spec(&self, name: &str) -> Result<ModelSpec> {
        self.resolve(name).ok_or_else(|| EngineError::UnknownModel {
            name: name.to_string(),
            available: self.names(),
        })
    }

    /// Every configured name, for error messages.
    pub fn names(&self) -> String {
        let specs = self.inner.specs();
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        names.join(", ")
    }

    pub fn budget(&self) -> u64 {
        self.inner.budget
    }

    /// Models loaded since start, and models unloaded to make room.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.inner.loads.load(Relaxed),
            self.inner.evictions.load(Relaxed),
        )
    }

    /// The engine of `name`, loaded first if it is not (blocking: run it off the async
    /// threads). `keep_alive` overrides the model's own for this request.
    pub fn acquire(&self, name: &str, keep_alive: Option<KeepAlive>) -> Result<ModelLease> {
        let spec = self.spec(name)?;
        let keep_alive = keep_alive
            .or(spec.keep_alive)
            .unwrap_or(self.inner.default_keep_alive);
        let deadline = Instant::now() + LOAD_WAIT;
        let mut st = self.inner.lock();
        loop {
            if let Some(slot) = st.loaded.get_mut(&spec.name) {
                slot.active += 1;
                return Ok(self.lease(&spec, slot.handle.clone(), keep_alive));
            }
            if !st.loading.contains_key(&spec.name) && !st.unloading.contains(&spec.name) {
                match self.make_room(&mut st, &spec)? {
                    true => break,
                    false => {}
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(EngineError::ModelBusy {
                    name: spec.name.clone(),
                    waited: LOAD_WAIT,
                });
            }
            st = self
                .inner
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(st);
        self.load(&spec, keep_alive)
    }

    fn lease(&self, spec: &ModelSpec, handle: EngineHandle, keep_alive: KeepAlive) -> ModelLease {
        ModelLease {
            inner: self.inner.clone(),
            name: spec.name.clone(),
            handle,
            keep_alive,
            sampling: spec.sampling,
        }
    }

    /// Reserves room for `spec`, unloading idle models least recently used first; `false`
    /// when only busy models could free it (wait and try again).
    fn make_room(&self, st: &mut State, spec: &ModelSpec) -> Result<bool> {
        let (on, need) = spec.need();
        let budget = match on {
            Device::Host => self.inner.budget,
            Device::Gpu(_) => GPU_WHOLE,
        };
        if need > budget {
            return Err(EngineError::ModelTooLarge {
                name: spec.name.clone(),
                bytes: need,
                budget,
            });
        }
        while st.used(on) + need > budget {
            let idle = st
                .loaded
                .iter()
                .filter(|(_, s)| s.device == on && s.active == 0 && !s.pinned)
                .min_by_key(|(_, s)| s.last_used)
                .map(|(n, _)| n.clone());
            let Some(victim) = idle else {
                return Ok(false);
            };
            if let Some(slot) = st.loaded.remove(&victim) {
                tracing::info!(model = %victim, "unloaded to make room for {}", spec.name);
                self.inner.evictions.fetch_add(1, Relaxed);
                slot.handle.shutdown();
            }
        }
        st.loading.insert(spec.name.clone(), (on, need));
        Ok(true)
    }

    /// Starts `spec`'s engine (its room reserved) and hands out the first lease.
    fn load(&self, spec: &ModelSpec, keep_alive: KeepAlive) -> Result<ModelLease> {
        let t0 = Instant::now();
        let started = start(spec.engine.clone());
        let mut st = self.inner.lock();
        let (device, reserved) = st.loading.remove(&spec.name).unwrap_or((Device::Host, 0));
        let handle = match started {
            Ok(h) => h,
            Err(e) => {
                drop(st);
                self.inner.changed.notify_all();
                return Err(e);
            }
        };
        let info = handle.info();
        tracing::info!(
            model = %spec.name,
            device = %info.device,
            kv_cache_tokens = info.num_kv_blocks * info.block_size,
            context = info.max_model_len,
            "loaded in {:.2?}",
            t0.elapsed()
        );
        self.inner.loads.fetch_add(1, Relaxed);
        // `auto` settles on the CPU for a model the GPU kernels cannot run (placement.rs):
        // it then counts against the host's budget, not the GPU's.
        let on_host = handle.info().device.starts_with("cpu");
        let (device, reserved) = match device {
            Device::Gpu(_) if on_host => (Device::Host, spec.estimated_bytes()),
            other => (other, reserved),
        };
        st.loaded.insert(
            spec.name.clone(),
            Slot {
                device,
                reserved,
                bytes: loaded_bytes(&handle),
                handle: handle.clone(),
                active: 1,
                last_used: Instant::now(),
                expires: None,
                expires_wall: None,
                pinned: spec.pinned,
            },
        );
        drop(st);
        self.inner.changed.notify_all();
        Ok(self.lease(spec, handle, keep_alive))
    }

    /// Unloads `name` now if it is idle; `Ok(false)` if it was not loaded. A busy model is
    /// an error (its requests keep it).
    pub fn unload(&self, name: &str) -> Result<bool> {
        let spec = self.spec(name)?;
        let mut st = self.inner.lock();
        match st.loaded.get(&spec.name) {
            None => Ok(false),
            Some(s) if s.pinned => Err(EngineError::Config(format!(
                "model `{}` was handed to the server running and cannot be loaded again; it stays",
                spec.name
            ))),
            Some(s) if s.active > 0 => Err(EngineError::ModelBusy {
                name: spec.name.clone(),
                waited: Duration::ZERO,
            }),
            Some(_) => {
                if let Some(slot) = st.loaded.remove(&spec.name) {
                    slot.handle.shutdown();
                }
                drop(st);
                self.inner.changed.notify_all();
                Ok(true)
            }
        }
    }

    /// Unloads the idle models whose keep-alive has run out (call it periodically).
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut st = self.inner.lock();
        let expired: Vec<String> = st
            .loaded
            .iter()
            .filter(|(_, s)| s.active == 0 && s.expires.is_some_and(|e| e <= now))
            .map(|(n, _)| n.clone())
            .collect();
        for name in &expired {
            if let Some(slot) = st.loaded.remove(name) {
                tracing::info!(model = %name, "unloaded (keep_alive ran out)");
                slot.handle.shutdown();
            }
        }
        drop(st);
        if !expired.is_empty() {
            self.inner.changed.notify_all();
        }
    }

    /// Every configured model, loaded or not, in configuration order.
    pub fn status(&self) -> Vec<ModelStatus> {
        let specs = self.inner.specs();
        let st = self.inner.lock();
        specs
            .iter()
            .map(|s| {
                let slot = st.loaded.get(&s.name);
                ModelStatus {
                    name: s.name.clone(),
                    path: s.engine.model.display().to_string(),
                    loaded: slot.is_some(),
                    bytes: slot.map_or_else(|| s.estimated_bytes(), |x| x.bytes),
                    active: slot.map_or(0, |x| x.active),
                    expires_at: slot.and_then(|x| x.expires_wall),
                }
            })
            .collect()
    }

    /// The first configured model that is loaded, with its engine (what a request that names
    /// no model reports on: scheduler statistics).
    pub fn first_loaded(&self) -> Option<(ModelSpec, EngineHandle)> {
        let loaded = self.loaded();
        self.specs().into_iter().find_map(|s| {
            let engine = loaded.iter().find(|(n, _)| *n == s.name)?.1.clone();
            Some((s, engine))
        })
    }

    /// The engines loaded now, by name (for metrics and shutdown).
    pub fn loaded(&self) -> Vec<(String, EngineHandle)> {
        let st = self.inner.lock();
        st.loaded
            .iter()
            .map(|(n, s)| (n.clone(), s.handle.clone()))
            .collect()
    }
}

/// Memory a running engine holds: its weights and its KV cache.
fn loaded_bytes(h: &EngineHandle) -> u64 {
    let i = h.info();
    let kv = i.num_kv_blocks * i.block_size * i.config.kv_bytes_per_token();
    (i.weight_bytes + kv) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keep_alive_reads_ollama_forms() {
        let p = |v| KeepAlive::parse(&v).unwrap();
        assert_eq!(p(json!("5m")), KeepAlive::For(Duration::from_secs(300)));
        assert_eq!(p(json!("1h30m")), KeepAlive::For(Duration::from_secs(5400)));
        assert_eq!(p(json!("45s")), KeepAlive::For(Duration::from_secs(45)));
        assert_eq!(p(json!(0)), KeepAlive::For(Duration::ZERO));
        assert_eq!(p(json!("0")), KeepAlive::For(Duration::ZERO));
        assert_eq!(p(json!(-1)), KeepAlive::Forever);
        assert_eq!(p(json!("-1")), KeepAlive::Forever);
        assert_eq!(p(json!(90)), KeepAlive::For(Duration::from_secs(90)));
        for bad in [json!("5x"), json!("m"), json!(""), json!(true)] {
            assert!(KeepAlive::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_resolve_in_any_case_with_latest_and_aliases() {
        let mut a = ModelSpec::new("SmolLM2", EngineConfig::new("a.gguf"));
        a.aliases.push("small".into());
        let pool = ModelPool::new(vec![a], 1, KeepAlive::Forever).unwrap();
        for n in ["SmolLM2", "smollm2", "smollm2:latest", "small"] {
            assert!(pool.resolve(n).is_some(), "{n}");
        }
        assert!(pool.resolve("other").is_none());
        let twice = vec![
            ModelSpec::new("x", EngineConfig::new("a")),
            ModelSpec::new("X", EngineConfig::new("b")),
        ];
        assert!(ModelPool::new(twice, 1, KeepAlive::Forever).is_err());
    }

    #[test]
    fn gpu_models_reserve_their_share_of_their_gpu_and_host_models_bytes() {
        let mut cfg = EngineConfig::new("builtin:stories260K");
        cfg.device = crate::DeviceChoice::Cuda(1);
        cfg.gpu_memory_fraction = 0.45;
        let gpu = ModelSpec::new("g", cfg);
        assert_eq!(gpu.need(), (Device::Gpu(1), 450_000));
        let mut cfg = EngineConfig::new("builtin:stories260K");
        cfg.kv_cache_mib = 8;
        assert_eq!(ModelSpec::new("h", cfg).need(), (Device::Host, 8 << 20));
        // Two at 0.45 share a GPU; a third does not fit beside them.
        assert!(2 * 450_000 <= GPU_WHOLE && 3 * 450_000 > GPU_WHOLE);
    }

    #[test]
    fn a_model_larger_than_the_budget_is_refused_by_name() {
        let spec = ModelSpec::new("big", EngineConfig::new("builtin:stories260K"));
        let pool = ModelPool::new(vec![spec], 1024, KeepAlive::Forever).unwrap();
        let err = pool
            .acquire("big", None)
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("big") && err.contains("budget"), "{err}");
    }
}
