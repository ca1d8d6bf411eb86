//! The option objects JavaScript passes in (camelCase on the JS side; napi-rs renames the
//! fields) and their conversion into the engine's types. Shape and key names are checked
//! by the package's `index.js` first; ranges are checked here and by the engine's one
//! request validator, so the messages match the HTTP API's.

use kr_engine::{ChatMessage, DeviceChoice, EngineConfig, KeepAlive, Prompt, SamplingParams};
use napi_derive::napi;

/// `createEngine(options)`.
#[napi(object)]
#[derive(Default)]
pub struct EngineOptions {
    /// Models known by name before any is loaded: `{ name, model, aliases? }`.
    pub models: Option<Vec<ModelEntry>>,
    /// Host memory the loaded models may hold together, in MiB (default: 80% of RAM).
    pub memory_budget_mib: Option<u32>,
    /// KV cache per model, in MiB (default 1024).
    pub kv_cache_mib: Option<u32>,
    /// Sequences one model runs at once (default 64).
    pub max_num_seqs: Option<u32>,
    /// `auto`, `cpu`, `cuda` or `cuda:N` (default `cpu`).
    pub device: Option<String>,
    /// How long an idle model stays loaded when the budget needs room: `5m`, `-1` (default).
    pub keep_alive: Option<String>,
}

/// One configured model.
#[napi(object)]
pub struct ModelEntry {
    pub name: String,
    /// A GGUF file, a Hugging Face directory, a llama2.c checkpoint, or `builtin:…`.
    pub model: String,
    pub aliases: Option<Vec<String>>,
}

/// One chat message.
#[napi(object)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// `createGenerator(options)` / `generate(options)`.
#[napi(object)]
pub struct GenerateOptions {
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub messages: Option<Vec<Message>>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u32>,
    pub seed: Option<i64>,
    pub stop: Option<Vec<String>>,
    /// Attach each token's logprob to its chunk.
    pub logprobs: Option<bool>,
}

/// A TypeError-style message for a bad option value.
pub fn invalid(field: &str, value: impl std::fmt::Display, allowed: &str) -> napi::Error {
    napi::Error::new(
        napi::Status::InvalidArg,
        format!("{field}: {value} is out of range; allowed: {allowed}"),
    )
}

impl EngineOptions {
    /// The engine configuration of the model at `path` under these options.
    pub fn engine_config(&self, path: &str) -> napi::Result<EngineConfig> {
        let mut cfg = EngineConfig::new(path);
        if let Some(mib) = self.kv_cache_mib {
            if mib == 0 {
                return Err(invalid("kvCacheMib", mib, "1 or more"));
            }
            cfg.kv_cache_mib = mib as usize;
        }
        if let Some(n) = self.max_num_seqs {
            if n == 0 {
                return Err(invalid("maxNumSeqs", n, "1 or more"));
            }
            cfg.max_num_seqs = n as usize;
        }
        if let Some(d) = &self.device {
            cfg.device = d
                .parse::<DeviceChoice>()
                .map_err(|e| napi::Error::new(napi::Status::InvalidArg, format!("device: {e}")))?;
        }
        Ok(cfg)
    }

    pub fn keep_alive(&self) -> napi::Result<KeepAlive> {
        let raw = self.keep_alive.as_deref().unwrap_or("-1");
        KeepAlive::parse(&serde_json::Value::String(raw.to_string()))
            .map_err(|e| napi::Error::new(napi::Status::InvalidArg, format!("keepAlive: {e}")))
    }
}

impl GenerateOptions {
    /// The prompt: raw text, or messages rendered through the model's chat template.
    pub fn prompt(&self) -> napi::Result<Prompt> {
        match (&self.prompt, &self.messages) {
            (Some(p), None) => Ok(Prompt::Text(p.clone())),
            (None, Some(m)) => Ok(Prompt::Chat(
                m.iter()
                    .map(|m| ChatMessage::new(&m.role, &m.content))
                    .collect(),
            )),
            _ => Err(napi::Error::new(
                napi::Status::InvalidArg,
                "give exactly one of prompt (a string) and messages (an array of {role, content})",
            )),
        }
    }

    /// Sampling parameters: the ones set here over `base` (greedy when `temperature` is 0).
    pub fn sampling(&self, base: SamplingParams) -> napi::Result<SamplingParams> {
        let mut p = base;
        if let Some(t) = self.temperature {
            p.temperature = t as f32;
        }
        if let Some(t) = self.top_p {
            p.top_p = t as f32;
        }
        if let Some(k) = self.top_k {
            p.top_k = k;
        }
        if let Some(s) = self.seed {
            p.seed = Some(u64::try_from(s).map_err(|_| invalid("seed", s, "0 or more"))?);
        }
        if let Some(stop) = &self.stop {
            p.stop = stop.clone();
        }
        if self.logprobs == Some(true) {
            p.logprobs = Some(0);
        }
        Ok(p)
    }
}
