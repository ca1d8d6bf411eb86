//! The one config schema of kr-serve: every setting of the server and the engine.
//!
//! A value comes from, highest first: a flag, env `KR_SERVE_<KEY>`, the YAML file
//! (`--config FILE`), a preset (`preset:` in the file, env `KR_SERVE_PRESET` or
//! `--preset`), the default. [`resolve`] builds the [`Effective`] config and records where
//! each value came from; errors name the key, the value and the allowed range. Runtime-safe
//! keys may change while serving ([`Effective::patch`], SIGHUP → [`Effective::reload`]).

pub mod keys;

use kr_engine::{
    AdaptiveConfig, DTypeChoice, DeviceChoice, EngineConfig, KvCacheDtype, LatencyConfig,
    PolicyConfig, TemplateLimits,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

pub use keys::{key, Key, ENV_ALIASES, KEYS};

/// One entry of the config file's `models` list: a model to serve, by path or Hub id,
/// with the name requests use, other names, and how long it stays loaded when idle.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// A path, `builtin:stories260K`, or a pulled `ORG/REPO[:FILE]`.
    pub model: String,
    /// The name requests use (default: the file's stem, or the repository's name).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Ollama's forms (`5m`, `1h`, `0`, `-1`); default: the `keep_alive` key.
    #[serde(default)]
    pub keep_alive: Option<String>,
    /// Sampling defaults for requests that do not set them (`temperature`, `top_p`,
    /// `top_k`, `min_p`, `repetition_penalty`).
    #[serde(default)]
    pub options: kr_engine::SamplingDefaults,
}

/// Every setting of the server and the engine, with its default.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub host: String,
    pub port: u16,
    pub model: String,
    /// Serve every model in this directory too (empty: none).
    pub models_dir: String,
    /// More models, with names, aliases and keep-alive (the config file's `models` list).
    pub models: Vec<ModelEntry>,
    /// Memory for the loaded models, MiB; 0 = 80% of the machine's memory.
    pub memory_budget_mib: usize,
    /// How long an idle model stays loaded (Ollama's forms; "-1": always).
    pub keep_alive: String,
    /// `first`, `all` or `none`: the models loaded before the server listens.
    pub preload: String,
    pub device: DeviceChoice,
    pub dtype: DTypeChoice,
    pub kv_cache_dtype: KvCacheDtype,
    /// On CUDA: the share of GPU memory for weights, KV cache and workspace.
    pub gpu_memory_fraction: f64,
    pub cuda_graphs: bool,
    /// Steps composed, and projections and attention computed, so that a request's numbers
    /// do not depend on the batch (see `kr_core::scheduler` and the CUDA backend).
    pub batch_invariant: bool,
    pub overlap_steps: bool,
    /// CPU worker threads; 0 = one per core.
    pub threads: usize,
    pub kv_cache_mib: usize,
    /// 0 = the model's context length.
    pub max_model_len: usize,
    /// File of accepted API keys, one a line; empty = none.
    pub api_key_file: String,
    /// A Jinja chat template file used instead of the model's (empty: the model's).
    pub chat_template: String,
    /// Chat-template sandbox: instructions, output MiB, memory MiB and milliseconds per
    /// render.
    pub template_fuel: u64,
    pub template_max_output_mib: usize,
    pub template_max_memory_mib: usize,
    pub template_timeout_ms: u64,
    /// Where templates render: `process` (a child process per render) or `thread`.
    pub template_sandbox: String,
    /// Connection limits (see `listen.rs`); times in seconds.
    pub max_connections: usize,
    pub header_read_timeout: f64,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub body_read_timeout: f64,
    /// On SIGTERM: how long in-flight requests may finish before they are cancelled.
    pub shutdown_timeout: f64,
    pub max_running: usize,
    pub max_queue: usize,
    pub max_body_bytes: usize,
    pub max_tokens_cap: u32,
    pub stream_interval: usize,
    /// Seconds; 0 = no limit.
    pub request_timeout: f64,
    pub strict: bool,
    /// Failed engine steps in a row that open the circuit breaker, and how long (seconds)
    /// it refuses new requests before letting a probe in.
    pub breaker_threshold: u32,
    pub breaker_cooldown: f64,
    /// Also export the queue and KV-usage gauges under vLLM's names (`vllm:…`), which the
    /// Gateway API Inference Extension's endpoint picker reads.
    pub vllm_metrics: bool,
    /// Longest a streamed token is held back for coalescing, ms; 0 = no time limit.
    pub stream_interval_ms: u64,
    // Scheduler policies (see `Config::policy`).
    pub fast_path: bool,
    /// Fixed admission window, ms (0 = off); unused while `adaptive_window` is on.
    pub scheduler_window_ms: f64,
    pub adaptive_window: bool,
    pub adaptive_window_low_ms: f64,
    pub adaptive_window_medium_ms: f64,
    pub adaptive_window_high_ms: f64,
    pub adaptive_window_low_depth: f64,
    pub adaptive_window_medium_depth: f64,
    pub adaptive_window_alpha: f64,
    pub adaptive_window_hysteresis: u32,
    pub auto_tune: bool,
    pub auto_tune_min_batch: usize,
    pub auto_tune_max_batch: usize,
    pub auto_tune_interval: u32,
    pub auto_tune_ema_alpha: f64,
    pub p99_threshold_ms: f64,
    /// Waiting time per priority level gained (0 = no aging).
    pub priority_aging_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            model: kr_engine::BUILTIN_MODEL.into(),
            models_dir: String::new(),
            models: Vec::new(),
            memory_budget_mib: 0,
            keep_alive: "-1".into(),
            preload: "first".into(),
            device: DeviceChoice::Auto,
            dtype: DTypeChoice::Auto,
            kv_cache_dtype: KvCacheDtype::Auto,
            gpu_memory_fraction: 0.9,
            cuda_graphs: true,
            batch_invariant: false,
            overlap_steps: true,
            threads: 0,
            kv_cache_mib: 1024,
            max_model_len: 0,
            api_key_file: String::new(),
            chat_template: String::new(),
            template_fuel: 5_000_000,
            template_max_output_mib: 16,
            template_max_memory_mib: 256,
            template_timeout_ms: 5000,
            template_sandbox: "process".into(),
            max_connections: 1024,
            header_read_timeout: 10.0,
            max_header_bytes: 64 << 10,
            max_headers: 100,
            body_read_timeout: 30.0,
            shutdown_timeout: 30.0,
            max_running: 64,
            max_queue: 256,
            max_body_bytes: 4 << 20,
            max_tokens_cap: 4096,
            stream_interval: 1,
            request_timeout: 0.0,
            strict: false,
            vllm_metrics: false,
            breaker_threshold: 5,
            breaker_cooldown: 10.0,
            stream_interval_ms: 0,
            fast_path: true,
            scheduler_window_ms: 0.0,
            adaptive_window: false,
            adaptive_window_low_ms: 0.75,
            adaptive_window_medium_ms: 1.0,
            adaptive_window_high_ms: 2.0,
            adaptive_window_low_depth: 1.0,
            adaptive_window_medium_depth: 5.0,
            adaptive_window_alpha: 0.5,
            adaptive_window_hysteresis: 3,
            auto_tune: false,
            auto_tune_min_batch: 2,
            auto_tune_max_batch: 8,
            auto_tune_interval: 10,
            auto_tune_ema_alpha: 0.3,
            p99_threshold_ms: 100.0,
            priority_aging_ms: 1000,
        }
    }
}

fn ms(v: f64) -> std::time::Duration {
    std::time::Duration::from_secs_f64(v / 1000.0)
}

impl Config {
    /// The models `model` names (one, or several separated by commas).
    pub fn model_paths(&self) -> Vec<String> {
        let paths = self
            .model
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty());
        paths.map(String::from).collect()
    }

    /// The engine configuration of the first model (see [`Config::engine_config_for`]).
    pub fn engine_config(&self) -> EngineConfig {
        let first = self.model_paths().into_iter().next().unwrap_or_default();
        self.engine_config_for(&first)
    }

    /// The engine's configuration for the model at `model`: device, sizes and scheduler
    /// policies. The engine runs as many sequences as the server admits to run
    /// (`max_running`, also the ceiling of the latency controller).
    pub fn engine_config_for(&self, model: &str) -> EngineConfig {
        EngineConfig {
            kv_cache_mib: self.kv_cache_mib,
            max_num_seqs: self.max_running,
            max_model_len: (self.max_model_len > 0).then_some(self.max_model_len),
            device: self.device,
            dtype: self.dtype,
            kv_cache_dtype: self.kv_cache_dtype,
            gpu_memory_fraction: self.gpu_memory_fraction,
            cuda_graphs: self.cuda_graphs,
            batch_invariant: self.batch_invariant,
            overlap_steps: self.overlap_steps,
            policy: self.policy(),
            template_limits: TemplateLimits {
                fuel: self.template_fuel,
                max_output_bytes: self.template_max_output_mib << 20,
                max_memory_bytes: self.template_max_memory_mib << 20,
                timeout: std::time::Duration::from_millis(self.template_timeout_ms),
                ..TemplateLimits::default()
            },
            chat_template_file: (!self.chat_template.is_empty())
                .then(|| self.chat_template.clone().into()),
            breaker: kr_engine::BreakerConfig {
                threshold: self.breaker_threshold,
                cooldown: std::time::Duration::from_secs_f64(self.breaker_cooldown),
            },
            ..EngineConfig::new(model)
        }
    }

    /// The engine's scheduler policies these settings ask for.
    pub fn policy(&self) -> PolicyConfig {
        let adaptive = self.adaptive_window.then(|| AdaptiveConfig {
            low_depth: self.adaptive_window_low_depth,
            medium_depth: self.adaptive_window_medium_depth,
            low: ms(self.adaptive_window_low_ms),
            medium: ms(self.adaptive_window_medium_ms),
            high: ms(self.adaptive_window_high_ms),
            alpha: self.adaptive_window_alpha,
            hysteresis: self.adaptive_window_hysteresis,
        });
        let latency = self.auto_tune.then(|| LatencyConfig {
            target: ms(self.p99_threshold_ms),
            min_batch: self.auto_tune_min_batch,
            max_batch: self.auto_tune_max_batch,
            interval: self.auto_tune_interval,
            alpha: self.auto_tune_ema_alpha,
        });
        PolicyConfig {
            fast_path: self.fast_path,
            window: ms(self.scheduler_window_ms),
            adaptive,
            latency,
            aging_step: (self.priority_aging_ms > 0)
                .then(|| std::time::Duration::from_millis(self.priority_aging_ms)),
        }
    }

    /// Rules that tie two keys together; the error names the second key.
    fn check(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, value: String, range| {
            Err(ConfigError::Invalid {
                key: key.to_string(),
                value,
                why: String::new(),
                range,
            })
        };
        if self.auto_tune_max_batch < self.auto_tune_min_batch {
            return bad(
                "auto_tune_max_batch",
                self.auto_tune_max_batch.to_string(),
                "at least auto_tune_min_batch",
            );
        }
        if self.adaptive_window_medium_depth < self.adaptive_window_low_depth {
            return bad(
                "adaptive_window_medium_depth",
                self.adaptive_window_medium_depth.to_string(),
                "at least adaptive_window_low_depth",
            );
        }
        Ok(())
    }
}

/// Where a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Default,
    Preset,
    File,
    Env,
    Flag,
    /// PATCH /admin/config.
    Admin,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self).ok();
        let name = s.as_ref().and_then(|v| v.as_str()).unwrap_or("?");
        f.write_str(name)
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("config key `{key}`: invalid value `{value}`{why}; allowed: {range}")]
    Invalid {
        key: String,
        value: String,
        /// What is wrong with it, when the check says more than the range (` (…)`).
        why: String,
        range: &'static str,
    },
    #[error("unknown config key `{key}` (in {origin}); known keys: {known}")]
    Unknown {
        key: String,
        origin: &'static str,
        known: String,
    },
    #[error("config key `{key}` is not runtime-safe; change it with a restart")]
    NotRuntimeSafe { key: String },
    #[error("unknown preset `{0}`; allowed: latency_sensitive, balanced, throughput_optimized")]
    Preset(String),
    #[error("config file {path}: {message}")]
    File { path: String, message: String },
}

/// What a config is resolved from: kept so SIGHUP can resolve it again.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// `(key, value)` of the flags given on the command line (`preset` allowed).
    pub flags: Vec<(String, String)>,
    /// `(key, value)` of the `KR_SERVE_<KEY>` variables (see [`env_vars`]).
    pub env: Vec<(String, String)>,
    pub file: Option<PathBuf>,
}

/// The `KR_SERVE_<KEY>` variables (and `KR_SERVE_PRESET`) of the process environment,
/// plus mlx-serving's `MLX_*` aliases ([`ENV_ALIASES`]) of keys not set by their own name.
pub fn env_vars() -> Vec<(String, String)> {
    env_vars_from(|name| std::env::var(name).ok())
}

/// [`env_vars`] over any lookup (tests pass a map).
pub fn env_vars_from(get: impl Fn(&str) -> Option<String>) -> Vec<(String, String)> {
    let names = KEYS.iter().map(|k| k.name).chain(["preset"]);
    let mut vars: Vec<(String, String)> = names
        .filter_map(|n| {
            let v = get(&format!("KR_SERVE_{}", n.to_ascii_uppercase()))?;
            Some((n.to_string(), v))
        })
        .collect();
    for (alias, key) in ENV_ALIASES {
        if vars.iter().any(|(k, _)| k == key) {
            continue;
        }
        if let Some(v) = get(alias) {
            vars.push((key.to_string(), v));
        }
    }
    vars
}

/// The config in force and the source of each value.
#[derive(Debug, Clone, PartialEq)]
pub struct Effective {
    pub config: Config,
    pub sources: BTreeMap<&'static str, Source>,
    pub preset: Option<String>,
}

/// The preset's values; `None` for an unknown name.
fn preset_values(name: &str) -> Option<&'static [(&'static str, &'static str)]> {
    Some(match name {
        // No window; the latency controller keeps steps under the p99 target.
        "latency_sensitive" => &[
            ("max_running", "16"),
            ("max_queue", "32"),
            ("stream_interval", "1"),
            ("request_timeout", "60"),
            ("fast_path", "true"),
            ("scheduler_window_ms", "0"),
            ("adaptive_window", "false"),
            ("auto_tune", "true"),
            ("auto_tune_min_batch", "2"),
            ("auto_tune_max_batch", "16"),
            ("p99_threshold_ms", "100"),
        ],
        // Continuous batching as is: no window, no controller.
        "balanced" => &[
            ("max_running", "64"),
            ("max_queue", "256"),
            ("stream_interval", "2"),
            ("request_timeout", "300"),
            ("fast_path", "true"),
            ("scheduler_window_ms", "0"),
            ("adaptive_window", "false"),
            ("auto_tune", "false"),
        ],
        // Arrivals while busy are gathered by the adaptive window (0.75/1/2 ms).
        "throughput_optimized" => &[
            ("max_running", "256"),
            ("max_queue", "1024"),
            ("stream_interval", "8"),
            ("request_timeout", "0"),
            ("fast_path", "true"),
            ("scheduler_window_ms", "2"),
            ("adaptive_window", "true"),
            ("auto_tune", "false"),
        ],
        _ => return None,
    })
}

/// Reads the YAML file into `(key, value)` pairs; unknown keys are errors naming the key.
pub fn read_file(path: &std::path::Path) -> Result<Vec<(String, String)>, ConfigError> {
    let file_err = |message: String| ConfigError::File {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let map: BTreeMap<String, serde_yaml::Value> =
        serde_yaml::from_str(&text).map_err(|e| file_err(e.to_string()))?;
    map.into_iter()
        .map(|(k, v)| {
            if k != "preset" && key(&k).is_none() {
                return Err(unknown(&k, "the config file"));
            }
            Ok((k, yaml_text(&v)))
        })
        .collect()
}

fn yaml_text(v: &serde_yaml::Value) -> String {
    match v {
        serde_yaml::Value::String(s) => s.clone(),
        serde_yaml::Value::Number(n) => n.to_string(),
        serde_yaml::Value::Bool(b) => b.to_string(),
        serde_yaml::Value::Null => String::new(),
        other => serde_yaml::to_string(other).unwrap_or_default(),
    }
}

fn unknown(k: &str, origin: &'static str) -> ConfigError {
    ConfigError::Unknown {
        key: k.to_string(),
        origin,
        known: keys::names(),
    }
}

/// Resolves `inputs`: flag > env > file > preset > default.
pub fn resolve(inputs: &Inputs) -> Result<Effective, ConfigError> {
    let file = match &inputs.file {
        Some(p) => read_file(p)?,
        None => Vec::new(),
    };
    let layers: [(&[(String, String)], Source, &'static str); 3] = [
        (&file, Source::File, "the config file"),
        (&inputs.env, Source::Env, "the environment"),
        (&inputs.flags, Source::Flag, "the flags"),
    ];
    let mut eff = Effective::default_config();
    let preset = layers
        .iter()
        .flat_map(|(l, _, _)| l.iter())
        .filter(|(k, _)| k == "preset")
        .last()
        .map(|(_, v)| v.trim().to_string());
    if let Some(name) = &preset {
        let values = preset_values(name).ok_or_else(|| ConfigError::Preset(name.clone()))?;
        for (k, v) in values {
            eff.set(k, v, Source::Preset, "the preset")?;
        }
        eff.preset = Some(name.clone());
    }
    for (layer, source, origin) in layers {
        for (k, v) in layer.iter().filter(|(k, _)| k != "preset") {
            eff.set(k, v, source, origin)?;
        }
    }
    eff.config.check()?;
    Ok(eff)
}

impl Effective {
    /// Every key at its default.
    pub fn default_config() -> Self {
        Self {
            config: Config::default(),
            sources: KEYS.iter().map(|k| (k.name, Source::Default)).collect(),
            preset: None,
        }
    }

    fn set(
        &mut self,
        k: &str,
        v: &str,
        src: Source,
        origin: &'static str,
    ) -> Result<(), ConfigError> {
        let key = key(k).ok_or_else(|| unknown(k, origin))?;
        key.set(&mut self.config, v)?;
        self.sources.insert(key.name, src);
        Ok(())
    }

    /// Applies a JSON object of runtime-safe keys to a copy: all of them or none.
    pub fn patch(
        &self,
        body: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, ConfigError> {
        let mut next = self.clone();
        for (k, v) in body {
            let key = key(k).ok_or_else(|| unknown(k, "the request"))?;
            if !key.runtime_safe {
                return Err(ConfigError::NotRuntimeSafe { key: k.clone() });
            }
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            next.set(k, &text, Source::Admin, "the request")?;
        }
        next.config.check()?;
        Ok(next)
    }

    /// The result of re-reading `inputs` (SIGHUP): runtime-safe keys take the new values;
    /// the others keep theirs (a restart applies them). Returns the new config and the
    /// names of the keys whose change was ignored.
    pub fn reload(&self, inputs: &Inputs) -> Result<(Self, Vec<&'static str>), ConfigError> {
        let fresh = resolve(inputs)?;
        let mut next = self.clone();
        let mut ignored = Vec::new();
        for k in KEYS {
            let new = k.get(&fresh.config);
            if k.runtime_safe {
                let text = match &new {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                k.set(&mut next.config, &text)?;
                next.sources.insert(k.name, fresh.sources[k.name]);
            } else if new != k.get(&self.config) {
                ignored.push(k.name);
            }
        }
        next.preset = fresh.preset;
        Ok((next, ignored))
    }

    /// `{"config": {key: value}, "sources": {key: source}, "runtime_safe": [...]}`.
    pub fn to_json(&self) -> serde_json::Value {
        let config: serde_json::Map<_, _> = KEYS
            .iter()
            .map(|k| (k.name.to_string(), k.get(&self.config)))
            .collect();
        let safe: Vec<_> = KEYS
            .iter()
            .filter(|k| k.runtime_safe)
            .map(|k| k.name)
            .collect();
        serde_json::json!({
            "config": config,
            "sources": self.sources,
            "preset": self.preset,
            "runtime_safe": safe,
        })
    }

    /// A table: key, value, source, runtime-safe.
    pub fn to_table(&self) -> String {
        let mut out = format!(
            "{:<29} {:<36} {:<8} {}\n",
            "KEY", "VALUE", "SOURCE", "RUNTIME-SAFE"
        );
        for k in KEYS {
            let v = match k.get(&self.config) {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            let src = self.sources.get(k.name).copied().unwrap_or(Source::Default);
            let safe = if k.runtime_safe { "yes" } else { "no" };
            out.push_str(&format!(
                "{:<29} {:<36} {:<8} {safe}\n",
                k.name,
                v,
                src.to_string()
            ));
        }
        if let Some(p) = &self.preset {
            out.push_str(&format!("preset: {p}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests;
