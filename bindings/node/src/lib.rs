//! kr-node: kr-serve's engine as a Node.js addon, the native half of the `kr-serve` npm
//! package (`index.js` is the TypeScript API in front of it: option checks, async
//! iterators, AbortSignal).
//!
//! Invariants: no call blocks Node's event loop — loading a model, rendering a template and
//! tokenising run on tokio's blocking threads, generation on the engine's own thread, and
//! JavaScript awaits promises; a model stays loaded while a generation holds its lease; after
//! `dispose()` every call fails with a message saying so.

mod generation;
mod options;

use generation::NativeGeneration;
use kr_engine::{KeepAlive, ModelPool, ModelSpec, RequestDraft, RequestOptions};
use napi_derive::napi;
use options::{EngineOptions, GenerateOptions};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// One configured model as `listModels()` reports it.
#[napi(object)]
pub struct ModelDescription {
    pub name: String,
    pub path: String,
    pub loaded: bool,
    /// Memory it holds (measured once loaded; the estimate otherwise).
    pub bytes: f64,
    /// Generations in flight on it.
    pub active: u32,
}

fn engine_error(e: kr_engine::EngineError) -> napi::Error {
    use kr_engine::EngineError as E;
    let status = match &e {
        E::Core(_) | E::Grammar { .. } | E::UnknownModel { .. } | E::NoChatTemplate => {
            napi::Status::InvalidArg
        }
        _ => napi::Status::GenericFailure,
    };
    napi::Error::new(status, e.to_string())
}

fn join_error(e: tokio::task::JoinError) -> napi::Error {
    napi::Error::from_reason(format!("the engine's worker thread failed: {e}"))
}

/// The engine: a pool of models sharing one memory budget (see the module header).
#[napi]
pub struct NativeEngine {
    pool: ModelPool,
    options: Arc<EngineOptions>,
    disposed: Arc<AtomicBool>,
}

#[napi]
impl NativeEngine {
    #[napi(constructor)]
    pub fn new(options: Option<EngineOptions>) -> napi::Result<Self> {
        let options = options.unwrap_or_default();
        // Checks the per-model settings now, not at the first load.
        options.engine_config("")?;
        let mut specs = Vec::new();
        for m in options.models.iter().flatten() {
            let mut spec = ModelSpec::new(&m.name, options.engine_config(&m.model)?);
            spec.aliases = m.aliases.clone().unwrap_or_default();
            specs.push(spec);
        }
        let budget = match options.memory_budget_mib {
            None => kr_engine::pool::default_memory_budget(),
            Some(0) => return Err(options::invalid("memoryBudgetMib", 0, "1 or more")),
            Some(mib) => u64::from(mib) << 20,
        };
        let pool = ModelPool::new(specs, budget, options.keep_alive()?).map_err(engine_error)?;
        Ok(Self {
            pool,
            options: Arc::new(options),
            disposed: Arc::new(AtomicBool::new(false)),
        })
    }

    fn live(&self) -> napi::Result<&ModelPool> {
        match self.disposed.load(Ordering::Acquire) {
            true => Err(napi::Error::from_reason(
                "this engine was disposed; create another with createEngine()",
            )),
            false => Ok(&self.pool),
        }
    }

    /// Loads `model` (a configured name, or a path, which is then configured under `name`
    /// or its file name) and returns the name it is served under.
    #[napi]
    pub async fn load_model(&self, model: String, name: Option<String>) -> napi::Result<String> {
        let pool = self.live()?.clone();
        let options = self.options.clone();
        let disposed = self.disposed.clone();
        tokio::task::spawn_blocking(move || {
            let served = match pool.resolve(&model) {
                Some(spec) => spec.name,
                None => configure_path(&pool, &options, &model, name)?,
            };
            lease(&pool, &disposed, &served, Some(KeepAlive::Forever))?;
            Ok(served)
        })
        .await
        .map_err(join_error)?
    }

    /// Unloads a model now; `false` if it was not loaded. A model with generations in
    /// flight is an error.
    #[napi]
    pub async fn unload_model(&self, name: String) -> napi::Result<bool> {
        let pool = self.live()?.clone();
        tokio::task::spawn_blocking(move || pool.unload(&name).map_err(engine_error))
            .await
            .map_err(join_error)?
    }

    #[napi]
    pub fn list_models(&self) -> napi::Result<Vec<ModelDescription>> {
        Ok(self
            .live()?
            .status()
            .into_iter()
            .map(|s| ModelDescription {
                name: s.name,
                path: s.path,
                loaded: s.loaded,
                bytes: s.bytes as f64,
                active: u32::try_from(s.active).unwrap_or(u32::MAX),
            })
            .collect())
    }

    /// Starts a generation: renders and tokenises the prompt, validates the request like
    /// the HTTP API does, and queues it.
    #[napi]
    pub async fn start(&self, request: GenerateOptions) -> napi::Result<NativeGeneration> {
        let pool = self.live()?.clone();
        let disposed = self.disposed.clone();
        tokio::task::spawn_blocking(move || {
            let lease = lease(&pool, &disposed, &model_name(&pool, &request)?, None)?;
            // The request's values over the model's defaults over the engine's.
            let defaults = lease.sampling().over(kr_engine::SamplingParams::default());
            let draft = RequestDraft {
                prompt: lease
                    .tokenize_prompt(&request.prompt()?)
                    .map_err(engine_error)?,
                params: request.sampling(defaults)?,
                max_tokens: request.max_tokens,
                options: RequestOptions::default(),
            };
            let checked = lease.validate(draft, u32::MAX).map_err(engine_error)?;
            let stream = lease.submit_validated(checked).map_err(engine_error)?;
            Ok(NativeGeneration::new(stream, lease))
        })
        .await
        .map_err(join_error)?
    }

    /// The token ids of `text` as a prompt of `model` (BOS included when the model adds it).
    #[napi]
    pub async fn tokenize(&self, text: String, model: Option<String>) -> napi::Result<Vec<u32>> {
        let pool = self.live()?.clone();
        let disposed = self.disposed.clone();
        tokio::task::spawn_blocking(move || {
            let name = match model {
                Some(m) => m,
                None => only_model(&pool)?,
            };
            let lease = lease(&pool, &disposed, &name, None)?;
            lease
                .tokenize_prompt(&kr_engine::Prompt::Text(text))
                .map_err(engine_error)
        })
        .await
        .map_err(join_error)?
    }

    /// The scheduler statistics of `model` (default: the first configured model that is
    /// loaded), as `GET /v1/scheduler/stats` reports them, plus the engine's counters.
    #[napi]
    pub fn scheduler_stats(&self, model: Option<String>) -> napi::Result<serde_json::Value> {
        let pool = self.live()?;
        let found = match model.as_deref() {
            Some(m) => {
                let spec = pool.resolve(m).ok_or_else(|| {
                    engine_error(kr_engine::EngineError::UnknownModel {
                        name: m.to_string(),
                        available: pool.names(),
                    })
                })?;
                let loaded = pool.loaded().into_iter().find(|(n, _)| *n == spec.name);
                loaded.map(|(_, e)| (spec, e))
            }
            None => pool.first_loaded(),
        };
        let Some((spec, engine)) = found else {
            return Ok(serde_json::json!({"loaded": false}));
        };
        let mut stats = engine.stats().scheduler_json(&spec.engine.policy);
        stats["model"] = serde_json::json!(spec.name);
        stats["engine"] = serde_json::to_value(engine.stats().snapshot()).unwrap_or_default();
        Ok(stats)
    }

    /// Stops every model: running generations end, their streams return `null`. Idempotent.
    #[napi]
    pub async fn dispose(&self) -> napi::Result<()> {
        if self.disposed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            for (_, engine) in pool.loaded() {
                engine.shutdown_and_wait(std::time::Duration::from_secs(10));
            }
        })
        .await
        .map_err(join_error)
    }
}

/// `name`'s engine, loaded if needed, after unloading models whose keep-alive ran out. A
/// `dispose()` that ran while this waited wins: the engine it loaded is stopped too.
fn lease(
    pool: &ModelPool,
    disposed: &AtomicBool,
    name: &str,
    keep_alive: Option<KeepAlive>,
) -> napi::Result<kr_engine::ModelLease> {
    pool.sweep();
    let lease = pool.acquire(name, keep_alive).map_err(engine_error)?;
    if disposed.load(Ordering::Acquire) {
        lease.shutdown();
        return Err(napi::Error::from_reason(
            "this engine was disposed; create another with createEngine()",
        ));
    }
    Ok(lease)
}

/// The model a request names, or the only one there is.
fn model_name(pool: &ModelPool, request: &GenerateOptions) -> napi::Result<String> {
    match &request.model {
        Some(m) => Ok(m.clone()),
        None => only_model(pool),
    }
}

fn only_model(pool: &ModelPool) -> napi::Result<String> {
    let specs = pool.specs();
    match specs.as_slice() {
        [one] => Ok(one.name.clone()),
        [] => Err(napi::Error::new(
            napi::Status::InvalidArg,
            "no model is loaded; call loadModel({ model: <path> }) first",
        )),
        _ => Err(napi::Error::new(
            napi::Status::InvalidArg,
            format!(
                "model: several models are configured ({}); name one",
                pool.names()
            ),
        )),
    }
}

/// Configures the model file or directory at `path` under `name` (default: its file name).
fn configure_path(
    pool: &ModelPool,
    options: &EngineOptions,
    path: &str,
    name: Option<String>,
) -> napi::Result<String> {
    if let Some(spec) = pool
        .specs()
        .into_iter()
        .find(|s| s.engine.model == Path::new(path))
    {
        return Ok(spec.name);
    }
    let builtin = path.starts_with("builtin:") || path.starts_with(kr_engine::RANDOM_PREFIX);
    if !builtin && !Path::new(path).exists() {
        return Err(napi::Error::new(
            napi::Status::InvalidArg,
            format!(
                "model: `{path}` is neither a configured model (configured: {}) nor an existing file or directory",
                match pool.names() { n if n.is_empty() => "none".to_string(), n => n }
            ),
        ));
    }
    let served = name.unwrap_or_else(|| kr_engine::served_name(path));
    pool.add(ModelSpec::new(&served, options.engine_config(path)?))
        .map_err(engine_error)?;
    Ok(served)
}
