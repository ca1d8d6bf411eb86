//! The key table of the config schema: every key's name, whether it is
//! runtime-safe (may change while serving), its allowed range, and how a text value is
//! parsed into [`Config`] and read back as JSON.

use super::{Config, ConfigError};
use serde_json::{json, Value};

/// One config key.
pub struct Key {
    pub name: &'static str,
    /// May change while serving (PATCH /admin/config, SIGHUP).
    pub runtime_safe: bool,
    /// The allowed values, in words (used in error messages).
    pub range: &'static str,
    set: fn(&mut Config, &str) -> Result<(), String>,
    get: fn(&Config) -> Value,
}

impl Key {
    /// Parses `value` into `cfg`; the error names the key, the value and the range.
    pub fn set(&self, cfg: &mut Config, value: &str) -> Result<(), ConfigError> {
        (self.set)(cfg, value).map_err(|why| ConfigError::Invalid {
            key: self.name.to_string(),
            value: value.to_string(),
            why: match why.is_empty() {
                true => String::new(),
                false => format!(" ({why})"),
            },
            range: self.range,
        })
    }

    pub fn get(&self, cfg: &Config) -> Value {
        (self.get)(cfg)
    }
}

fn int<T: std::str::FromStr + PartialOrd>(v: &str, lo: T, hi: T) -> Result<T, String> {
    let n: T = v.trim().parse().map_err(|_| String::new())?;
    if n < lo || n > hi {
        return Err(String::new());
    }
    Ok(n)
}

fn boolean(v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(String::new()),
    }
}

fn seconds(v: &str) -> Result<f64, String> {
    let s: f64 = v.trim().parse().map_err(|_| String::new())?;
    if !(0.0..=86_400.0).contains(&s) {
        return Err(String::new());
    }
    Ok(s)
}

fn float(v: &str, lo: f64, hi: f64) -> Result<f64, String> {
    let x: f64 = v.trim().parse().map_err(|_| String::new())?;
    if !(lo..=hi).contains(&x) {
        return Err(String::new());
    }
    Ok(x)
}

fn text(v: &str) -> Result<String, String> {
    let t = v.trim();
    if t.is_empty() {
        return Err(String::new());
    }
    Ok(t.to_string())
}

/// The `models` list (YAML or JSON text): each entry's fields checked, keep-alive parsed.
fn parse_models(v: &str) -> Result<Vec<super::ModelEntry>, String> {
    if v.trim().is_empty() {
        return Ok(Vec::new());
    }
    let list: Vec<super::ModelEntry> = serde_yaml::from_str(v).map_err(|e| e.to_string())?;
    for m in &list {
        if m.model.trim().is_empty() {
            return Err("an entry has an empty `model`".into());
        }
        if let Some(k) = &m.keep_alive {
            kr_engine::KeepAlive::parse(&Value::String(k.clone()))
                .map_err(|e| format!("{}: {e}", m.model))?;
        }
    }
    Ok(list)
}

/// Every key, in display order.
pub static KEYS: &[Key] = &[
    Key {
        name: "host",
        runtime_safe: false,
        range: "a non-empty address",
        set: |c, v| Ok(c.host = text(v)?),
        get: |c| json!(c.host),
    },
    Key {
        name: "port",
        runtime_safe: false,
        range: "0..=65535 (0 picks a free port)",
        set: |c, v| Ok(c.port = int(v, 0u16, u16::MAX)?),
        get: |c| json!(c.port),
    },
    Key {
        name: "model",
        runtime_safe: false,
        range: "a model path or builtin:stories260K; several separated by commas",
        set: |c, v| Ok(c.model = text(v)?),
        get: |c| json!(c.model),
    },
    Key {
        name: "models_dir",
        runtime_safe: false,
        range: "a directory whose GGUF files and Hugging Face model directories are served too (empty: none)",
        set: |c, v| Ok(c.models_dir = v.trim().to_string()),
        get: |c| json!(c.models_dir),
    },
    Key {
        name: "models",
        runtime_safe: false,
        range: "a list of {model, name, aliases, keep_alive, options} (model: a path or a pulled ORG/REPO[:FILE]; options: temperature, top_p, top_k, min_p, repetition_penalty)",
        set: |c, v| Ok(c.models = parse_models(v)?),
        get: |c| json!(c.models),
    },
    Key {
        name: "memory_budget_mib",
        runtime_safe: false,
        range: "0..=16777216 MiB for the loaded models' weights and KV caches (0: 80% of the machine's memory)",
        set: |c, v| Ok(c.memory_budget_mib = int(v, 0usize, 1 << 24)?),
        get: |c| json!(c.memory_budget_mib),
    },
    Key {
        name: "keep_alive",
        runtime_safe: false,
        range: "how long an idle model stays loaded: a duration (5m, 1h, 30s), 0 (unload at once) or -1 (always)",
        set: |c, v| {
            kr_engine::KeepAlive::parse(&serde_json::Value::String(v.trim().into()))?;
            Ok(c.keep_alive = v.trim().to_string())
        },
        get: |c| json!(c.keep_alive),
    },
    Key {
        name: "preload",
        runtime_safe: false,
        range: "first, all or none: the models loaded before the server listens",
        set: |c, v| match v.trim() {
            p @ ("first" | "all" | "none") => Ok(c.preload = p.to_string()),
            _ => Err(String::new()),
        },
        get: |c| json!(c.preload),
    },
    Key {
        name: "device",
        runtime_safe: false,
        range: "auto, cpu, cuda or cuda:N (auto: CUDA when a GPU and its driver are present)",
        set: |c, v| Ok(c.device = v.parse()?),
        get: |c| json!(c.device.to_string()),
    },
    Key {
        name: "dtype",
        runtime_safe: false,
        range: "auto, f32 or bf16 (the GPU's compute type; the CPU computes in f32; f16 parses but is not implemented on CUDA yet)",
        set: |c, v| Ok(c.dtype = v.parse()?),
        get: |c| json!(c.dtype.to_string()),
    },
    Key {
        name: "kv_cache_dtype",
        runtime_safe: false,
        range: "auto or fp8 (auto: the compute type; fp8: E4M3 codes with per-token scales, half of bf16's bytes, CUDA with bf16 compute only)",
        set: |c, v| Ok(c.kv_cache_dtype = v.parse()?),
        get: |c| json!(c.kv_cache_dtype.to_string()),
    },
    Key {
        name: "gpu_memory_fraction",
        runtime_safe: false,
        range: "0.05..=1 (share of GPU memory for weights, KV cache and workspace)",
        set: |c, v| Ok(c.gpu_memory_fraction = float(v, 0.05, 1.0)?),
        get: |c| json!(c.gpu_memory_fraction),
    },
    Key {
        name: "cuda_graphs",
        runtime_safe: false,
        range: "true or false (replay decode steps from CUDA graphs)",
        set: |c, v| Ok(c.cuda_graphs = boolean(v)?),
        get: |c| json!(c.cuda_graphs),
    },
    Key {
        name: "batch_invariant",
        runtime_safe: false,
        range: "true or false (a request's tokens do not depend on what runs beside it: decode-only steps alternate with one prefill chunk; CUDA bf16 tiled-attention models; costs throughput at large batches)",
        set: |c, v| Ok(c.batch_invariant = boolean(v)?),
        get: |c| json!(c.batch_invariant),
    },
    Key {
        name: "overlap_steps",
        runtime_safe: false,
        range: "true or false (launch decode step N+1 before step N's tokens are read)",
        set: |c, v| Ok(c.overlap_steps = boolean(v)?),
        get: |c| json!(c.overlap_steps),
    },
    Key {
        name: "threads",
        runtime_safe: false,
        range: "0..=1024 CPU worker threads (0 = one per core)",
        set: |c, v| Ok(c.threads = int(v, 0usize, 1024)?),
        get: |c| json!(c.threads),
    },
    Key {
        name: "kv_cache_mib",
        runtime_safe: false,
        range: "1..=1048576",
        set: |c, v| Ok(c.kv_cache_mib = int(v, 1usize, 1 << 20)?),
        get: |c| json!(c.kv_cache_mib),
    },
    Key {
        name: "max_model_len",
        runtime_safe: false,
        range: "0..=16777216 (0 = the model's)",
        set: |c, v| Ok(c.max_model_len = int(v, 0usize, 1 << 24)?),
        get: |c| json!(c.max_model_len),
    },
    Key {
        name: "api_key_file",
        runtime_safe: false,
        range: "a readable file of API keys, one a line (empty = none)",
        set: |c, v| Ok(c.api_key_file = v.trim().to_string()),
        get: |c| json!(c.api_key_file),
    },
    Key {
        name: "chat_template",
        runtime_safe: false,
        range: "a Jinja chat template file used instead of the model's (empty = the model's)",
        set: |c, v| Ok(c.chat_template = v.trim().to_string()),
        get: |c| json!(c.chat_template),
    },
    Key {
        name: "template_fuel",
        runtime_safe: false,
        range: "1000..=1000000000 chat-template instructions per render",
        set: |c, v| Ok(c.template_fuel = int(v, 1000u64, 1_000_000_000)?),
        get: |c| json!(c.template_fuel),
    },
    Key {
        name: "template_max_output_mib",
        runtime_safe: false,
        range: "1..=1024 MiB of rendered chat-template text",
        set: |c, v| Ok(c.template_max_output_mib = int(v, 1usize, 1024)?),
        get: |c| json!(c.template_max_output_mib),
    },
    Key {
        name: "template_max_memory_mib",
        runtime_safe: false,
        range: "16..=65536 MiB a chat-template render may allocate",
        set: |c, v| Ok(c.template_max_memory_mib = int(v, 16usize, 65536)?),
        get: |c| json!(c.template_max_memory_mib),
    },
    Key {
        name: "template_timeout_ms",
        runtime_safe: false,
        range: "10..=600000 ms per chat-template render",
        set: |c, v| Ok(c.template_timeout_ms = int(v, 10u64, 600_000)?),
        get: |c| json!(c.template_timeout_ms),
    },
    Key {
        name: "template_sandbox",
        runtime_safe: false,
        range: "process (a child process per render: a crashing template ends only it) or thread",
        set: |c, v| match v.trim() {
            t @ ("process" | "thread") => Ok(c.template_sandbox = t.to_string()),
            _ => Err(String::new()),
        },
        get: |c| json!(c.template_sandbox),
    },
    Key {
        name: "max_connections",
        runtime_safe: false,
        range: "1..=1000000 open connections (more are closed at once)",
        set: |c, v| Ok(c.max_connections = int(v, 1usize, 1_000_000)?),
        get: |c| json!(c.max_connections),
    },
    Key {
        name: "header_read_timeout",
        runtime_safe: false,
        range: "0.1..=3600 seconds to send a request's headers (from connect, or idle)",
        set: |c, v| Ok(c.header_read_timeout = float(v, 0.1, 3600.0)?),
        get: |c| json!(c.header_read_timeout),
    },
    Key {
        name: "max_header_bytes",
        runtime_safe: false,
        range: "8192..=16777216 bytes of request headers",
        set: |c, v| Ok(c.max_header_bytes = int(v, 8192usize, 1 << 24)?),
        get: |c| json!(c.max_header_bytes),
    },
    Key {
        name: "max_headers",
        runtime_safe: false,
        range: "8..=10000 request headers",
        set: |c, v| Ok(c.max_headers = int(v, 8usize, 10_000)?),
        get: |c| json!(c.max_headers),
    },
    Key {
        name: "body_read_timeout",
        runtime_safe: false,
        range: "0.1..=3600 seconds for a request body to arrive",
        set: |c, v| Ok(c.body_read_timeout = float(v, 0.1, 3600.0)?),
        get: |c| json!(c.body_read_timeout),
    },
    Key {
        name: "shutdown_timeout",
        runtime_safe: false,
        range: "0..=86400 seconds in-flight requests may finish after SIGTERM",
        set: |c, v| Ok(c.shutdown_timeout = seconds(v)?),
        get: |c| json!(c.shutdown_timeout),
    },
    Key {
        name: "max_running",
        runtime_safe: false,
        range: "1..=4096",
        set: |c, v| Ok(c.max_running = int(v, 1usize, 4096)?),
        get: |c| json!(c.max_running),
    },
    Key {
        name: "max_queue",
        runtime_safe: true,
        range: "0..=1000000",
        set: |c, v| Ok(c.max_queue = int(v, 0usize, 1_000_000)?),
        get: |c| json!(c.max_queue),
    },
    Key {
        name: "max_body_bytes",
        runtime_safe: false,
        range: "1024..=1073741824",
        set: |c, v| Ok(c.max_body_bytes = int(v, 1024usize, 1 << 30)?),
        get: |c| json!(c.max_body_bytes),
    },
    Key {
        name: "max_tokens_cap",
        runtime_safe: true,
        range: "1..=1048576",
        set: |c, v| Ok(c.max_tokens_cap = int(v, 1u32, 1 << 20)?),
        get: |c| json!(c.max_tokens_cap),
    },
    Key {
        name: "stream_interval",
        runtime_safe: true,
        range: "1..=1024",
        set: |c, v| Ok(c.stream_interval = int(v, 1usize, 1024)?),
        get: |c| json!(c.stream_interval),
    },
    Key {
        name: "breaker_threshold",
        runtime_safe: false,
        range: "1..=1000 failed steps in a row",
        set: |c, v| Ok(c.breaker_threshold = int(v, 1u32, 1000)?),
        get: |c| json!(c.breaker_threshold),
    },
    Key {
        name: "breaker_cooldown",
        runtime_safe: false,
        range: "0.1..=3600 seconds",
        set: |c, v| Ok(c.breaker_cooldown = float(v, 0.1, 3600.0)?),
        get: |c| json!(c.breaker_cooldown),
    },
    Key {
        name: "request_timeout",
        runtime_safe: true,
        range: "0..=86400 seconds (0 = no limit)",
        set: |c, v| Ok(c.request_timeout = seconds(v)?),
        get: |c| json!(c.request_timeout),
    },
    Key {
        name: "strict",
        runtime_safe: true,
        range: "true or false",
        set: |c, v| Ok(c.strict = boolean(v)?),
        get: |c| json!(c.strict),
    },
    Key {
        name: "vllm_metrics",
        runtime_safe: true,
        range: "true or false",
        set: |c, v| Ok(c.vllm_metrics = boolean(v)?),
        get: |c| json!(c.vllm_metrics),
    },
    Key {
        name: "stream_interval_ms",
        runtime_safe: true,
        range: "0..=60000 ms (0 = runs wait for stream_interval tokens)",
        set: |c, v| Ok(c.stream_interval_ms = int(v, 0u64, 60_000)?),
        get: |c| json!(c.stream_interval_ms),
    },
    // Scheduler policies; all applied live to the engine.
    Key {
        name: "fast_path",
        runtime_safe: true,
        range: "true or false",
        set: |c, v| Ok(c.fast_path = boolean(v)?),
        get: |c| json!(c.fast_path),
    },
    Key {
        name: "scheduler_window_ms",
        runtime_safe: true,
        range: "0..=5 milliseconds (0 = off)",
        set: |c, v| Ok(c.scheduler_window_ms = float(v, 0.0, 5.0)?),
        get: |c| json!(c.scheduler_window_ms),
    },
    Key {
        name: "adaptive_window",
        runtime_safe: true,
        range: "true or false",
        set: |c, v| Ok(c.adaptive_window = boolean(v)?),
        get: |c| json!(c.adaptive_window),
    },
    Key {
        name: "adaptive_window_low_ms",
        runtime_safe: true,
        range: "0..=5 milliseconds",
        set: |c, v| Ok(c.adaptive_window_low_ms = float(v, 0.0, 5.0)?),
        get: |c| json!(c.adaptive_window_low_ms),
    },
    Key {
        name: "adaptive_window_medium_ms",
        runtime_safe: true,
        range: "0..=5 milliseconds",
        set: |c, v| Ok(c.adaptive_window_medium_ms = float(v, 0.0, 5.0)?),
        get: |c| json!(c.adaptive_window_medium_ms),
    },
    Key {
        name: "adaptive_window_high_ms",
        runtime_safe: true,
        range: "0..=5 milliseconds",
        set: |c, v| Ok(c.adaptive_window_high_ms = float(v, 0.0, 5.0)?),
        get: |c| json!(c.adaptive_window_high_ms),
    },
    Key {
        name: "adaptive_window_low_depth",
        runtime_safe: true,
        range: "0..=100000 queued requests (EMA), at most adaptive_window_medium_depth",
        set: |c, v| Ok(c.adaptive_window_low_depth = float(v, 0.0, 100_000.0)?),
        get: |c| json!(c.adaptive_window_low_depth),
    },
    Key {
        name: "adaptive_window_medium_depth",
        runtime_safe: true,
        range: "0..=100000 queued requests (EMA), at least adaptive_window_low_depth",
        set: |c, v| Ok(c.adaptive_window_medium_depth = float(v, 0.0, 100_000.0)?),
        get: |c| json!(c.adaptive_window_medium_depth),
    },
    Key {
        name: "adaptive_window_alpha",
        runtime_safe: true,
        range: "0.01..=1",
        set: |c, v| Ok(c.adaptive_window_alpha = float(v, 0.01, 1.0)?),
        get: |c| json!(c.adaptive_window_alpha),
    },
    Key {
        name: "adaptive_window_hysteresis",
        runtime_safe: true,
        range: "1..=100 consecutive samples",
        set: |c, v| Ok(c.adaptive_window_hysteresis = int(v, 1u32, 100)?),
        get: |c| json!(c.adaptive_window_hysteresis),
    },
    Key {
        name: "auto_tune",
        runtime_safe: true,
        range: "true or false",
        set: |c, v| Ok(c.auto_tune = boolean(v)?),
        get: |c| json!(c.auto_tune),
    },
    Key {
        name: "auto_tune_min_batch",
        runtime_safe: true,
        range: "1..=4096, at most auto_tune_max_batch",
        set: |c, v| Ok(c.auto_tune_min_batch = int(v, 1usize, 4096)?),
        get: |c| json!(c.auto_tune_min_batch),
    },
    Key {
        name: "auto_tune_max_batch",
        runtime_safe: true,
        range: "1..=4096, at least auto_tune_min_batch (capped by max_running)",
        set: |c, v| Ok(c.auto_tune_max_batch = int(v, 1usize, 4096)?),
        get: |c| json!(c.auto_tune_max_batch),
    },
    Key {
        name: "auto_tune_interval",
        runtime_safe: true,
        range: "1..=1000 steps",
        set: |c, v| Ok(c.auto_tune_interval = int(v, 1u32, 1000)?),
        get: |c| json!(c.auto_tune_interval),
    },
    Key {
        name: "auto_tune_ema_alpha",
        runtime_safe: true,
        range: "0.01..=1",
        set: |c, v| Ok(c.auto_tune_ema_alpha = float(v, 0.01, 1.0)?),
        get: |c| json!(c.auto_tune_ema_alpha),
    },
    Key {
        name: "p99_threshold_ms",
        runtime_safe: true,
        range: "1..=60000 milliseconds",
        set: |c, v| Ok(c.p99_threshold_ms = float(v, 1.0, 60_000.0)?),
        get: |c| json!(c.p99_threshold_ms),
    },
    Key {
        name: "priority_aging_ms",
        runtime_safe: true,
        range: "0..=3600000 milliseconds per priority level (0 = no aging)",
        set: |c, v| Ok(c.priority_aging_ms = int(v, 0u64, 3_600_000)?),
        get: |c| json!(c.priority_aging_ms),
    },
];

/// The environment names of the system kr-serve reimplements, accepted as aliases; a
/// `KR_SERVE_<KEY>` variable wins over its alias.
pub static ENV_ALIASES: &[(&str, &str)] = &[
    ("MLX_GPU_SCHEDULER_WINDOW_MS", "scheduler_window_ms"),
    ("MLX_GPU_SCHEDULER_BATCH_SIZE", "max_running"),
    ("MLX_GPU_SCHEDULER_P99_THRESHOLD_MS", "p99_threshold_ms"),
    ("MLX_ADAPTIVE_WINDOW", "adaptive_window"),
    ("MLX_ADAPTIVE_WINDOW_LOW_MS", "adaptive_window_low_ms"),
    ("MLX_ADAPTIVE_WINDOW_MEDIUM_MS", "adaptive_window_medium_ms"),
    ("MLX_ADAPTIVE_WINDOW_HIGH_MS", "adaptive_window_high_ms"),
    (
        "MLX_ADAPTIVE_WINDOW_LOW_THRESHOLD",
        "adaptive_window_low_depth",
    ),
    (
        "MLX_ADAPTIVE_WINDOW_MEDIUM_THRESHOLD",
        "adaptive_window_medium_depth",
    ),
    ("MLX_ADAPTIVE_WINDOW_EMA_ALPHA", "adaptive_window_alpha"),
    (
        "MLX_ADAPTIVE_WINDOW_HYSTERESIS",
        "adaptive_window_hysteresis",
    ),
    ("MLX_FAST_PATH", "fast_path"),
    ("MLX_AUTO_TUNE", "auto_tune"),
    ("MLX_AUTO_TUNE_MIN_BATCH", "auto_tune_min_batch"),
    ("MLX_AUTO_TUNE_MAX_BATCH", "auto_tune_max_batch"),
    ("MLX_AUTO_TUNE_INTERVAL", "auto_tune_interval"),
    ("MLX_AUTO_TUNE_EMA_ALPHA", "auto_tune_ema_alpha"),
];

/// The key called `name`, if any.
pub fn key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

/// The names of every key, for "allowed keys" messages.
pub fn names() -> String {
    KEYS.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
}
