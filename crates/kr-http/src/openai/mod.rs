//! The OpenAI dialect: /v1/chat/completions, /v1/completions, /v1/models.
//! Wire types are thin adapters over one internal request (`SamplingParams` + prompts).

pub mod chat;
pub mod completions;

use crate::error::{ApiError, Result};
use crate::extract::check_unknown;
use crate::state::{AppState, Server, Shared};
use axum::extract::{Path, State};
use axum::Json;
use kr_engine::{Constraint, ConstraintKind, SamplingParams};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// Most choices one request may ask for.
pub const MAX_N: u32 = 16;

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The sampling fields both OpenAI endpoints share (plus vLLM-style extensions).
#[derive(Debug, Clone, Default)]
pub struct CommonFields {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub n: Option<u32>,
    pub stop: Option<StopField>,
    pub seed: Option<u64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub logit_bias: Option<HashMap<String, f32>>,
    pub top_k: Option<u32>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub ignore_eos: Option<bool>,
    pub response_format: Option<Value>,
    pub structured_outputs: Option<Value>,
}

/// Declares an OpenAI request struct with its own fields plus the shared sampling fields
/// and a catch-all for unknown ones, and `common()` to read the shared ones.
macro_rules! openai_request {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $f:ident : $t:ty,)* }) => {
        $(#[$m])*
        #[derive(Debug, serde::Deserialize)]
        pub struct $name {
            $($(#[$fm])* pub $f: $t,)*
            pub temperature: Option<f32>,
            pub top_p: Option<f32>,
            pub n: Option<u32>,
            pub stop: Option<crate::openai::StopField>,
            pub seed: Option<u64>,
            pub presence_penalty: Option<f32>,
            pub frequency_penalty: Option<f32>,
            pub logit_bias: Option<std::collections::HashMap<String, f32>>,
            pub top_k: Option<u32>,
            pub min_p: Option<f32>,
            pub repetition_penalty: Option<f32>,
            pub ignore_eos: Option<bool>,
            pub response_format: Option<serde_json::Value>,
            pub structured_outputs: Option<serde_json::Value>,
            pub stream: Option<bool>,
            pub stream_options: Option<crate::openai::StreamOptions>,
            pub user: Option<String>,
            #[serde(flatten)]
            pub extra: serde_json::Map<String, serde_json::Value>,
        }
        impl $name {
            pub fn common(&self) -> crate::openai::CommonFields {
                crate::openai::CommonFields {
                    temperature: self.temperature,
                    top_p: self.top_p,
                    n: self.n,
                    stop: self.stop.clone(),
                    seed: self.seed,
                    presence_penalty: self.presence_penalty,
                    frequency_penalty: self.frequency_penalty,
                    logit_bias: self.logit_bias.clone(),
                    top_k: self.top_k,
                    min_p: self.min_p,
                    repetition_penalty: self.repetition_penalty,
                    ignore_eos: self.ignore_eos,
                    response_format: self.response_format.clone(),
                    structured_outputs: self.structured_outputs.clone(),
                }
            }
        }
    };
}
pub(crate) use openai_request;

impl CommonFields {
    /// The engine's parameters (`max_tokens` and logprobs are set by the caller); a value
    /// the request does not set comes from `model` (the model's defaults), else OpenAI's.
    pub fn to_params(&self, model: &kr_engine::SamplingDefaults) -> Result<SamplingParams> {
        let d = model.over(SamplingParams::default());
        let stop = match &self.stop {
            None => Vec::new(),
            Some(StopField::One(s)) => vec![s.clone()],
            Some(StopField::Many(v)) => v.clone(),
        };
        let mut logit_bias = Vec::new();
        for (k, v) in self.logit_bias.iter().flatten() {
            let id = k.parse::<u32>().map_err(|_| {
                ApiError::bad(
                    "logit_bias",
                    format!("logit_bias key `{k}` is not a token id"),
                )
            })?;
            logit_bias.push((id, *v));
        }
        Ok(SamplingParams {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_p: self.top_p.unwrap_or(d.top_p),
            top_k: self.top_k.unwrap_or(d.top_k),
            min_p: self.min_p.unwrap_or(d.min_p),
            repetition_penalty: self.repetition_penalty.unwrap_or(d.repetition_penalty),
            presence_penalty: self.presence_penalty.unwrap_or(d.presence_penalty),
            frequency_penalty: self.frequency_penalty.unwrap_or(d.frequency_penalty),
            logit_bias,
            seed: self.seed,
            stop,
            ignore_eos: self.ignore_eos.unwrap_or(false),
            ..d
        })
    }

    /// The output constraint: OpenAI `response_format` or the `structured_outputs`
    /// extension (not both).
    pub fn constraint(&self) -> Result<Option<Constraint>> {
        match (&self.response_format, &self.structured_outputs) {
            (Some(_), Some(_)) => Err(ApiError::bad(
                "structured_outputs",
                "send `response_format` or `structured_outputs`, not both",
            )),
            (Some(rf), None) => response_format(rf),
            (None, Some(so)) => structured_outputs(so).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// `n`, checked: 1..=MAX_N.
    pub fn n(&self) -> Result<usize> {
        match self.n.unwrap_or(1) {
            n @ 1..=MAX_N => Ok(n as usize),
            n => Err(ApiError::bad(
                "n",
                format!("invalid value {n} for `n`: allowed 1..={MAX_N}"),
            )),
        }
    }
}

/// Checks the parts of a request every OpenAI endpoint checks the same way, and gives the
/// state of the model it names (loaded first if need be).
pub async fn check_request(
    server: &Server,
    model: &str,
    extra: &Map<String, Value>,
) -> Result<AppState> {
    check_unknown(server, extra)?;
    server.model(model, None).await
}

fn model_object(server: &Shared, name: &str) -> Value {
    let mut m = json!({
        "id": name,
        "object": "model",
        "created": server.started,
        "owned_by": "kr-serve",
    });
    if let Some((_, engine)) = server.pool.loaded().into_iter().find(|(n, _)| n == name) {
        m["max_model_len"] = json!(engine.info().max_model_len);
    }
    m
}

/// GET /v1/models: every configured model, loaded or not.
pub async fn list_models(State(server): State<Server>) -> Json<Value> {
    let data: Vec<Value> = server
        .pool
        .specs()
        .iter()
        .map(|s| model_object(&server, &s.name))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

/// GET /v1/models/{model}
pub async fn get_model(
    State(server): State<Server>,
    Path(model): Path<String>,
) -> Result<Json<Value>> {
    let spec = server
        .pool
        .resolve(&model)
        .ok_or_else(|| ApiError::unknown_model(&model, &server.pool.names()))?;
    Ok(Json(model_object(&server, &spec.name)))
}

/// A fresh id with an OpenAI-style prefix (`chatcmpl-…`, `cmpl-…`).
pub fn new_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{:x}{n:06x}", crate::state::unix_now())
}

/// OpenAI's `usage` object.
pub fn usage_json(u: &kr_engine::Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_prompt_tokens},
    })
}

/// OpenAI `response_format`: `{"type": "text"}`, `{"type": "json_object"}` or
/// `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`.
fn response_format(rf: &Value) -> Result<Option<Constraint>> {
    const F: &str = "response_format";
    let kind = rf.get("type").and_then(Value::as_str);
    let c = |k| Ok(Some(Constraint::new(F, k)));
    match kind {
        Some("text") => Ok(None),
        Some("json_object") => c(ConstraintKind::JsonObject),
        Some("json_schema") => {
            let schema = rf.pointer("/json_schema/schema").ok_or_else(|| {
                ApiError::bad(
                    "response_format.json_schema.schema",
                    "`json_schema` needs a `schema` object",
                )
            })?;
            c(ConstraintKind::JsonSchema(schema.clone()))
        }
        _ => Err(ApiError::bad(
            "response_format.type",
            format!(
                "invalid value {} for `response_format.type`: allowed text, json_object, json_schema",
                rf.get("type").unwrap_or(&Value::Null)
            ),
        )),
    }
}

/// The `structured_outputs` extension (vLLM's): exactly one of `json` (a schema),
/// `json_object: true`, `regex`, `choice` (a list of strings) or `grammar` (Lark).
fn structured_outputs(so: &Value) -> Result<Constraint> {
    const F: &str = "structured_outputs";
    let allowed = "one of json (a JSON schema), json_object (true), regex (a string), choice (a list of strings), grammar (a Lark grammar)";
    let obj = so
        .as_object()
        .filter(|o| o.len() == 1)
        .ok_or_else(|| ApiError::bad(F, format!("`structured_outputs` takes {allowed}")))?;
    let (key, v) = obj.iter().next().ok_or_else(|| ApiError::bad(F, allowed))?;
    let wrong = |what: &str| ApiError::bad(format!("{F}.{key}"), format!("`{key}` must be {what}"));
    let kind = match key.as_str() {
        "json" => ConstraintKind::JsonSchema(v.clone()),
        "json_object" if v == &Value::Bool(true) => ConstraintKind::JsonObject,
        "json_object" => return Err(wrong("true")),
        "regex" => ConstraintKind::Regex(v.as_str().ok_or_else(|| wrong("a string"))?.into()),
        "grammar" => ConstraintKind::Lark(v.as_str().ok_or_else(|| wrong("a string"))?.into()),
        "choice" => ConstraintKind::Choice(
            v.as_array()
                .and_then(|a| a.iter().map(|s| s.as_str().map(String::from)).collect())
                .ok_or_else(|| wrong("a list of strings"))?,
        ),
        other => {
            return Err(ApiError::bad(
                F,
                format!("unknown key `{other}` in `structured_outputs`: allowed {allowed}"),
            ))
        }
    };
    Ok(Constraint::new(F, kind))
}
