//! The Ollama dialect: /api/generate and /api/chat (NDJSON streams by default,
//! one object with `stream: false`), /api/tags, /api/show, /api/ps, /api/version.
//! `options` map onto `SamplingParams` with Ollama's defaults (temperature 0.8, top_k 40,
//! top_p 0.9, repeat_penalty 1.1); errors are `{"error": "..."}`.

use crate::error::{ApiError, OllamaError};
use crate::extract::{check_unknown, check_unknown_in, OllamaJson};
use crate::generate::{self, Completion, FieldNames, Job, TokenOut};
use crate::openai::chat::thinking_mode;
use crate::reasoning;
use crate::state::{AppState, Server, Shared};
use crate::stream::{event_response, ndjson, Encoder};
use crate::tools::{self, ToolFormat};
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use kr_engine::{
    ChatContext, ChatMessage, Constraint, ConstraintKind, FinishReason, KeepAlive, ModelStatus,
    Prompt, RequestOptions, SamplingParams, Usage,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

type Result<T> = std::result::Result<T, OllamaError>;

#[derive(Debug, Default, Deserialize)]
pub struct Options {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub min_p: Option<f32>,
    pub num_predict: Option<i64>,
    pub seed: Option<i64>,
    pub stop: Option<Vec<String>>,
    pub repeat_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub num_ctx: Option<u64>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
pub struct GenerateRequest {
    pub model: String,
    pub prompt: Option<String>,
    pub system: Option<String>,
    pub raw: Option<bool>,
    pub stream: Option<bool>,
    pub options: Option<Options>,
    pub format: Option<Value>,
    pub keep_alive: Option<Value>,
    pub think: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<MessageIn>,
    pub stream: Option<bool>,
    pub options: Option<Options>,
    pub format: Option<Value>,
    pub keep_alive: Option<Value>,
    pub tools: Option<Value>,
    pub think: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
pub struct MessageIn {
    pub role: String,
    #[serde(default)]
    pub content: String,
    #[serde(default)]
    pub tool_calls: Option<Vec<Value>>,
    #[serde(default)]
    pub tool_name: Option<String>,
    #[serde(default)]
    pub thinking: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl MessageIn {
    /// The message for the template: Ollama's tool calls (`{"function": {"name",
    /// "arguments": {…}}}`) in the OpenAI shape templates read, a tool result's name.
    fn to_chat(&self) -> ChatMessage {
        let mut m = ChatMessage::new(&self.role, &self.content);
        m.tool_calls = self.tool_calls.as_ref().map(|calls| {
            calls
                .iter()
                .map(|c| json!({"type": "function", "function": c.get("function").cloned().unwrap_or(Value::Null)}))
                .collect()
        });
        m.name = self.tool_name.clone();
        m
    }
}

/// The state of the model an Ollama request names, loaded first if need be; `keep_alive`
/// (Ollama's forms: `"5m"`, seconds, `0` unloads after the request, `-1` keeps it) sets how
/// long it stays loaded afterwards.
pub(crate) async fn model_for(
    server: &Server,
    model: &str,
    keep_alive: Option<&Value>,
) -> std::result::Result<AppState, ApiError> {
    let keep_alive = match keep_alive.filter(|v| !v.is_null()) {
        None => None,
        Some(v) => Some(KeepAlive::parse(v).map_err(|e| ApiError::bad("keep_alive", e))?),
    };
    server.model(model, keep_alive).await
}

/// What `tools` and `think` change for an Ollama chat: the template's context, the tool
/// format to parse the reply in, whether the template thinks.
struct ChatExtras {
    ctx: ChatContext,
    tools: Option<ToolFormat>,
}

fn chat_extras(
    state: &AppState,
    tools: Option<&Value>,
    think: Option<&Value>,
) -> Result<ChatExtras> {
    let mut ctx = ChatContext::default();
    if let Some(Value::Bool(t)) = think {
        ctx.kwargs.insert("enable_thinking".into(), Value::Bool(*t));
    }
    let list = match tools {
        None | Some(Value::Null) => return Ok(ChatExtras { ctx, tools: None }),
        Some(Value::Array(l)) if l.is_empty() => return Ok(ChatExtras { ctx, tools: None }),
        Some(Value::Array(l)) => l,
        Some(_) => return Err(ApiError::bad("tools", "`tools` must be a list").into()),
    };
    tools::check_tools(list)?;
    let format = tools::template_format(state.engine.chat_template_source())?;
    ctx.tools = Some(Value::Array(list.clone()));
    Ok(ChatExtras {
        ctx,
        tools: Some(format),
    })
}

/// The reply as an Ollama chat message: content, `thinking` (templates that think) and
/// `tool_calls` with their arguments as objects.
fn reply_message(text: &str, tools: Option<ToolFormat>, thinking: Option<bool>) -> Value {
    let (thought, text) = match thinking {
        Some(opened) => reasoning::split(text, opened),
        None => (None, text.to_string()),
    };
    let (content, calls) = match tools {
        Some(f) => tools::parse(f, &text),
        None => (text, Vec::new()),
    };
    let mut m = json!({"role": "assistant", "content": content});
    if let Some(t) = thought {
        m["thinking"] = t.into();
    }
    if !calls.is_empty() {
        m["tool_calls"] = calls
            .iter()
            .map(|c| {
                let args: Value = serde_json::from_str(&c.arguments).unwrap_or(Value::Null);
                json!({"function": {"name": c.name, "arguments": args}})
            })
            .collect();
    }
    m
}

#[derive(Debug, Deserialize)]
pub struct ShowRequest {
    pub model: Option<String>,
    pub name: Option<String>,
}

/// `options` → sampling parameters (and the `num_predict` request, if any).
fn to_params(
    state: &AppState,
    opts: &Options,
) -> std::result::Result<(SamplingParams, Option<u32>), ApiError> {
    check_unknown(state, &opts.extra)?;
    // -1 and -2 mean "as many as fit"; any other value is checked by the engine.
    let num_predict = match opts.num_predict {
        None | Some(-1) | Some(-2) => None,
        Some(n) => Some(u32::try_from(n.max(0)).unwrap_or(u32::MAX)),
    };
    // Ollama's defaults, under the model's own.
    let d = state.sampling.over(SamplingParams {
        temperature: 0.8,
        top_p: 0.9,
        top_k: 40,
        min_p: 0.0,
        repetition_penalty: 1.1,
        ..SamplingParams::default()
    });
    let p = SamplingParams {
        temperature: opts.temperature.unwrap_or(d.temperature),
        top_p: opts.top_p.unwrap_or(d.top_p),
        top_k: opts.top_k.unwrap_or(d.top_k),
        min_p: opts.min_p.unwrap_or(d.min_p),
        repetition_penalty: opts.repeat_penalty.unwrap_or(d.repetition_penalty),
        presence_penalty: opts.presence_penalty.unwrap_or(0.0),
        frequency_penalty: opts.frequency_penalty.unwrap_or(0.0),
        seed: opts.seed.and_then(|s| u64::try_from(s).ok()),
        stop: opts.stop.clone().unwrap_or_default(),
        ..SamplingParams::default()
    };
    Ok((p, num_predict))
}

/// One Ollama generate or chat request, as [`run`] takes it.
struct RunSpec {
    model: String,
    prompt: Prompt,
    options: Option<Options>,
    format: Option<Value>,
    stream: bool,
    chat: bool,
    /// Chat with tools: the format to parse the reply in.
    tools: Option<ToolFormat>,
}

/// Ollama `format`: `"json"` (any JSON object) or a JSON schema; `""`/absent: free text.
fn format_constraint(format: Option<&Value>) -> std::result::Result<Option<Constraint>, ApiError> {
    let c = |k| Ok(Some(Constraint::new("format", k)));
    match format {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if s == "json" => c(ConstraintKind::JsonObject),
        Some(v @ Value::Object(_)) => c(ConstraintKind::JsonSchema(v.clone())),
        Some(other) => Err(ApiError::bad(
            "format",
            format!("invalid value {other} for `format`: allowed \"json\" or a JSON schema object"),
        )),
    }
}

/// Runs one request and answers NDJSON (streaming) or one JSON object.
async fn run(state: AppState, arrived: Instant, spec: RunSpec) -> Result<Response> {
    let RunSpec {
        model,
        prompt,
        options: opts,
        format,
        stream,
        chat,
        tools,
    } = spec;
    let constraint = format_constraint(format.as_ref())?;
    let (params, num_predict) = to_params(&state, &opts.unwrap_or_default())?;
    let ids = generate::tokenize(&state, prompt).await?;
    let thinking = chat
        .then(|| thinking_mode(&state, &ids))
        .flatten()
        .filter(|&opened| !opened || constraint.is_none());
    let fields = match chat {
        true => FieldNames::OLLAMA_CHAT,
        false => FieldNames::OLLAMA_GENERATE,
    };
    let job = Job {
        prompts: &[ids],
        params: &params,
        max_tokens: num_predict,
        n: 1,
        options: RequestOptions {
            constraint,
            ..RequestOptions::default()
        },
        fields,
    };
    let streams = generate::launch(&state, arrived, job)?;
    let enc = NdjsonEncoder {
        model,
        chat,
        arrived,
        first: None,
        tools,
        thinking,
        held: String::new(),
    };
    if stream {
        let pacing = state.pacing(false, arrived);
        return Ok(event_response(streams, enc, pacing, "application/x-ndjson"));
    }
    let mut outs = generate::collect_within(&state, arrived, streams).await?;
    let c: Completion = outs
        .pop()
        .ok_or_else(|| ApiError::Internal("no output".into()))?;
    let first = c.tokens.first().map(|_| arrived);
    let mut body = NdjsonEncoder { first, ..enc }.done_object(c.finish, c.usage);
    body[if chat { "message" } else { "response" }] = if chat {
        reply_message(&c.text, tools, thinking)
    } else {
        json!(c.text)
    };
    Ok(Json(body).into_response())
}

/// POST /api/generate
pub async fn generate(
    State(server): State<Server>,
    OllamaJson(req): OllamaJson<GenerateRequest>,
) -> Result<Response> {
    let arrived = Instant::now();
    check_unknown(&server, &req.extra)?;
    if server.cfg().strict && req.think.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(ApiError::bad(
            "think",
            "`think` is honoured on /api/chat, not on /api/generate (strict mode)",
        )
        .into());
    }
    let state = model_for(&server, &req.model, req.keep_alive.as_ref()).await?;
    let text = req.prompt.unwrap_or_default();
    if text.is_empty() {
        // Ollama's "load the model" request: nothing to generate.
        let body = json!({"model": req.model, "created_at": rfc3339_now(), "response": "", "done": true, "done_reason": "load"});
        return Ok(Json(body).into_response());
    }
    let prompt = if req.raw.unwrap_or(false) || !state.engine.has_chat_template() {
        Prompt::Text(text)
    } else {
        let mut msgs = Vec::new();
        if let Some(sys) = &req.system {
            msgs.push(ChatMessage::new("system", sys));
        }
        msgs.push(ChatMessage::new("user", &text));
        Prompt::Chat(msgs)
    };
    let stream = req.stream.unwrap_or(true);
    let spec = RunSpec {
        model: req.model,
        prompt,
        options: req.options,
        format: req.format,
        stream,
        chat: false,
        tools: None,
    };
    run(state, arrived, spec).await
}

/// POST /api/chat
pub async fn chat(
    State(server): State<Server>,
    OllamaJson(req): OllamaJson<ChatRequest>,
) -> Result<Response> {
    let arrived = Instant::now();
    check_unknown(&server, &req.extra)?;
    generate::check_message_count(req.messages.len())?;
    for (i, m) in req.messages.iter().enumerate() {
        check_unknown_in(&server, &format!("messages[{i}]"), &m.extra)?;
    }
    let state = model_for(&server, &req.model, req.keep_alive.as_ref()).await?;
    let msgs = req.messages.iter().map(MessageIn::to_chat).collect();
    let extras = chat_extras(&state, req.tools.as_ref(), req.think.as_ref())?;
    let stream = req.stream.unwrap_or(true);
    let spec = RunSpec {
        model: req.model,
        prompt: Prompt::Conversation(msgs, extras.ctx),
        options: req.options,
        format: req.format,
        stream,
        chat: true,
        tools: extras.tools,
    };
    run(state, arrived, spec).await
}

/// NDJSON lines of an Ollama generate or chat stream.
struct NdjsonEncoder {
    model: String,
    chat: bool,
    arrived: Instant,
    first: Option<Instant>,
    /// With tools or thinking, the reply is held and sent whole in the final line.
    tools: Option<ToolFormat>,
    thinking: Option<bool>,
    held: String,
}

impl NdjsonEncoder {
    fn done_object(&self, reason: FinishReason, usage: Usage) -> Value {
        let now = Instant::now();
        let first = self.first.unwrap_or(now);
        let ns = |d: std::time::Duration| d.as_nanos() as u64;
        json!({
            "model": self.model,
            "created_at": rfc3339_now(),
            "done": true,
            "done_reason": generate::finish_str(reason),
            "total_duration": ns(now - self.arrived),
            "load_duration": 0,
            "prompt_eval_count": usage.prompt_tokens,
            "prompt_eval_duration": ns(first - self.arrived),
            "eval_count": usage.completion_tokens,
            "eval_duration": ns(now - first),
        })
    }
}

impl Encoder for NdjsonEncoder {
    fn tokens(&mut self, _index: usize, toks: &[TokenOut]) -> Vec<Bytes> {
        self.first.get_or_insert_with(Instant::now);
        let text: String = toks.iter().map(|t| t.text.as_str()).collect();
        if self.chat && (self.tools.is_some() || self.thinking.is_some()) {
            self.held.push_str(&text);
            return Vec::new();
        }
        if text.is_empty() {
            return Vec::new();
        }
        let mut line = json!({"model": self.model, "created_at": rfc3339_now(), "done": false});
        if self.chat {
            line["message"] = json!({"role": "assistant", "content": text});
        } else {
            line["response"] = json!(text);
        }
        vec![ndjson(&line)]
    }

    fn finish(&mut self, _index: usize, reason: FinishReason, usage: Usage) -> Vec<Bytes> {
        let mut line = self.done_object(reason, usage);
        if self.chat {
            let held = std::mem::take(&mut self.held);
            line["message"] = reply_message(&held, self.tools, self.thinking);
        } else {
            line["response"] = json!("");
        }
        vec![ndjson(&line)]
    }

    fn error(&mut self, _index: usize, message: &str) -> Vec<Bytes> {
        vec![ndjson(&json!({ "error": message }))]
    }

    fn end(&mut self) -> Vec<Bytes> {
        Vec::new()
    }
}

fn details(name: &str, arch: &str) -> Value {
    let quant = name.rsplit_once('.').map_or("", |(_, q)| q);
    json!({"parent_model": "", "format": "gguf", "family": arch, "families": [arch], "parameter_size": "", "quantization_level": quant})
}

fn model_entry(server: &Shared, m: &ModelStatus, arch: &str) -> Value {
    json!({
        "name": m.name, "model": m.name, "modified_at": rfc3339(server.started, 0),
        "size": m.bytes, "digest": "", "details": details(&m.name, arch),
    })
}

/// GET /api/tags: every configured model.
pub async fn tags(State(server): State<Server>) -> Json<Value> {
    let loaded = server.pool.loaded();
    let arch = |name: &str| {
        let e = loaded.iter().find(|(n, _)| n == name);
        e.map_or(String::new(), |(_, e)| e.info().config.architecture.clone())
    };
    let models: Vec<Value> = server
        .pool
        .status()
        .iter()
        .map(|m| model_entry(&server, m, &arch(&m.name)))
        .collect();
    Json(json!({ "models": models }))
}

/// GET /api/ps: the models loaded now, their memory, and when each unloads if idle.
pub async fn ps(State(server): State<Server>) -> Json<Value> {
    let loaded = server.pool.loaded();
    let mut models = Vec::new();
    for m in server.pool.status().iter().filter(|m| m.loaded) {
        let Some((_, engine)) = loaded.iter().find(|(n, _)| *n == m.name) else {
            continue;
        };
        let info = engine.info();
        let mut e = model_entry(&server, m, &info.config.architecture);
        e["expires_at"] = json!(m.expires_at.map_or_else(
            || "2999-01-01T00:00:00Z".to_string(),
            |t| {
                let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
                rfc3339(d.as_secs(), d.subsec_nanos())
            }
        ));
        let on_gpu = !info.device.starts_with("cpu");
        e["size_vram"] = json!(if on_gpu { m.bytes } else { 0 });
        e["context_length"] = json!(info.max_model_len);
        e["requests_active"] = json!(m.active);
        models.push(e);
    }
    Json(json!({ "models": models }))
}

/// POST /api/show
pub async fn show(
    State(server): State<Server>,
    OllamaJson(req): OllamaJson<ShowRequest>,
) -> Result<Json<Value>> {
    let model = req.model.or(req.name).unwrap_or_default();
    let state = model_for(&server, &model, None).await?;
    let info = state.engine.info();
    let c = &info.config;
    let a = &c.architecture;
    let mut model_info = Map::new();
    model_info.insert("general.architecture".into(), json!(a));
    model_info.insert(format!("{a}.context_length"), json!(info.max_model_len));
    model_info.insert(format!("{a}.embedding_length"), json!(c.hidden_size));
    model_info.insert(format!("{a}.block_count"), json!(c.num_layers));
    model_info.insert(format!("{a}.attention.head_count"), json!(c.num_heads));
    model_info.insert(
        format!("{a}.attention.head_count_kv"),
        json!(c.num_kv_heads),
    );
    model_info.insert(format!("{a}.vocab_size"), json!(c.vocab_size));
    Ok(Json(json!({
        "modelfile": "", "parameters": "", "template": "",
        "details": details(state.model_name(), a), "model_info": model_info,
        "capabilities": ["completion"], "modified_at": rfc3339(state.started, 0),
    })))
}

/// GET /api/version
pub async fn version() -> Json<Value> {
    Json(json!({ "version": env!("CARGO_PKG_VERSION") }))
}

fn rfc3339_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs(), d.subsec_nanos())
}

/// `YYYY-MM-DDThh:mm:ss.nnnnnnnnnZ` for a Unix time (Hinnant's civil-from-days).
pub fn rfc3339(secs: u64, nanos: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_formats_known_dates() {
        assert_eq!(super::rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            super::rfc3339(1_709_251_199, 5),
            "2024-02-29T23:59:59.000000005Z"
        );
    }
}
