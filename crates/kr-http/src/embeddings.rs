//! Embeddings: OpenAI's POST /v1/embeddings, Ollama's POST /api/embed and the older
//! POST /api/embeddings.
//!
//! Each input becomes one engine request that runs its prompt like a prefill (batched by the
//! scheduler with everything else, admitted and timed like a generation) and returns the
//! model's pooled, L2-normalised hidden state (`kr_engine::Pooling`: the model's own setting,
//! else the last token's). `dimensions` keeps the first N values and normalises again
//! (Matryoshka truncation, as OpenAI's and Qwen3-Embedding's clients expect);
//! `encoding_format: base64` sends the little-endian f32 bytes, as OpenAI does.

use crate::error::{ApiError, OllamaError, Result};
use crate::extract::{check_unknown, ApiJson, OllamaJson};
use crate::generate::{self, FieldNames, Job};
use crate::state::{AppState, Server};
use axum::extract::State;
use axum::Json;
use base64::Engine as _;
use kr_engine::{Prompt, RequestOptions, Usage};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::time::Instant;

/// Most inputs one request may carry (OpenAI's limit).
pub const MAX_INPUTS: usize = 2048;

/// One text, several, token ids, or several lists of ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum InputIn {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

impl InputIn {
    fn prompts(self) -> Vec<Prompt> {
        match self {
            InputIn::Text(t) => vec![Prompt::Text(t)],
            InputIn::Texts(v) => v.into_iter().map(Prompt::Text).collect(),
            InputIn::Tokens(ids) => vec![Prompt::Tokens(ids)],
            InputIn::TokenLists(v) => v.into_iter().map(Prompt::Tokens).collect(),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct EmbeddingRequest {
    pub model: String,
    pub input: InputIn,
    pub dimensions: Option<u64>,
    pub encoding_format: Option<String>,
    pub user: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// What to do with an input longer than the context window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Overflow {
    /// A 400 naming the input (OpenAI; Ollama's `truncate: false`).
    Refuse,
    /// Keep the first tokens that fit (Ollama's default).
    Truncate,
}

/// Embeds every input; the vectors in input order with their token counts.
async fn embed_all(
    state: &AppState,
    arrived: Instant,
    prompts: Vec<Prompt>,
    field: &'static str,
    overflow: Overflow,
) -> Result<Vec<(Vec<f32>, Usage)>> {
    match prompts.len() {
        0 => return Err(ApiError::bad(field, format!("`{field}` must not be empty"))),
        n if n > MAX_INPUTS => {
            return Err(ApiError::bad(
                field,
                format!("`{field}` has {n} entries; at most {MAX_INPUTS} are allowed"),
            ))
        }
        _ => {}
    }
    let fits = state.engine.info().max_model_len.saturating_sub(1);
    let mut ids = Vec::with_capacity(prompts.len());
    for p in prompts {
        let mut t = generate::tokenize(state, p)
            .await
            .map_err(|e| rename_param(e, field))?;
        if overflow == Overflow::Truncate {
            t.truncate(fits);
        }
        ids.push(t);
    }
    let draft = state.engine.embedding_draft(Vec::new());
    let job = Job {
        prompts: &ids,
        params: &draft.params,
        max_tokens: draft.max_tokens,
        n: 1,
        options: RequestOptions {
            embed: draft.options.embed,
            ..RequestOptions::default()
        },
        fields: FieldNames {
            prompt: field,
            max_tokens: field,
        },
    };
    let streams = generate::launch(state, arrived, job)?;
    let each = streams.into_iter().map(generate::collect_embedding);
    generate::within(state, arrived, futures_util::future::join_all(each))
        .await?
        .into_iter()
        .collect()
}

fn rename_param(e: ApiError, field: &'static str) -> ApiError {
    match e {
        ApiError::BadRequest { message, code, .. } => ApiError::BadRequest {
            message,
            code,
            param: Some(field.into()),
        },
        other => other,
    }
}

/// Keeps the first `dims` values of each vector and normalises again.
fn shorten(vectors: &mut [(Vec<f32>, Usage)], dims: Option<u64>, width: usize) -> Result<()> {
    let Some(d) = dims else { return Ok(()) };
    if d == 0 || d as usize > width {
        return Err(ApiError::bad(
            "dimensions",
            format!(
                "invalid value {d} for `dimensions`: allowed 1..={width} (the model's hidden size)"
            ),
        ));
    }
    for (v, _) in vectors {
        v.truncate(d as usize);
        kr_engine::normalize(v);
    }
    Ok(())
}

fn prompt_tokens(vectors: &[(Vec<f32>, Usage)]) -> usize {
    vectors.iter().map(|(_, u)| u.prompt_tokens).sum()
}

/// POST /v1/embeddings
pub async fn openai_embeddings(
    State(server): State<Server>,
    ApiJson(req): ApiJson<EmbeddingRequest>,
) -> Result<Json<Value>> {
    let arrived = Instant::now();
    let state = crate::openai::check_request(&server, &req.model, &req.extra).await?;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::bad(
                "encoding_format",
                format!("invalid value `{other}` for `encoding_format`: allowed `float`, `base64`"),
            ))
        }
    };
    let width = state.engine.info().config.hidden_size;
    let prompts = req.input.prompts();
    let mut vectors = embed_all(&state, arrived, prompts, "input", Overflow::Refuse).await?;
    shorten(&mut vectors, req.dimensions, width)?;
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, (v, _))| {
            let embedding = match base64 {
                true => json!(base64_f32(v)),
                false => json!(v),
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let n = prompt_tokens(&vectors);
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": req.model,
        "usage": {"prompt_tokens": n, "total_tokens": n},
    })))
}

/// The little-endian bytes of `v`, base64-encoded (OpenAI's `encoding_format: base64`).
fn base64_f32(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Ollama's `input`: one text or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OllamaInput {
    Text(String),
    Texts(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct EmbedRequest {
    pub model: String,
    pub input: OllamaInput,
    pub truncate: Option<bool>,
    pub dimensions: Option<u64>,
    pub options: Option<Value>,
    pub keep_alive: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// POST /api/embed
pub async fn ollama_embed(
    State(server): State<Server>,
    OllamaJson(req): OllamaJson<EmbedRequest>,
) -> std::result::Result<Json<Value>, OllamaError> {
    let arrived = Instant::now();
    let state = check_ollama(&server, &req.model, &req.extra, req.keep_alive.as_ref()).await?;
    let prompts = match req.input {
        OllamaInput::Text(t) => vec![Prompt::Text(t)],
        OllamaInput::Texts(v) => v.into_iter().map(Prompt::Text).collect(),
    };
    let overflow = match req.truncate.unwrap_or(true) {
        true => Overflow::Truncate,
        false => Overflow::Refuse,
    };
    let width = state.engine.info().config.hidden_size;
    let mut vectors = embed_all(&state, arrived, prompts, "input", overflow).await?;
    shorten(&mut vectors, req.dimensions, width)?;
    let embeddings: Vec<&Vec<f32>> = vectors.iter().map(|(v, _)| v).collect();
    Ok(Json(json!({
        "model": req.model,
        "embeddings": embeddings,
        "total_duration": arrived.elapsed().as_nanos() as u64,
        "load_duration": 0,
        "prompt_eval_count": prompt_tokens(&vectors),
    })))
}

#[derive(Debug, Deserialize)]
pub struct LegacyEmbeddingRequest {
    pub model: String,
    pub prompt: String,
    pub options: Option<Value>,
    pub keep_alive: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// POST /api/embeddings (Ollama's older route: one prompt, `{embedding}`; an empty prompt
/// gets an empty vector, as Ollama answers).
pub async fn ollama_embeddings(
    State(server): State<Server>,
    OllamaJson(req): OllamaJson<LegacyEmbeddingRequest>,
) -> std::result::Result<Json<Value>, OllamaError> {
    let arrived = Instant::now();
    let state = check_ollama(&server, &req.model, &req.extra, req.keep_alive.as_ref()).await?;
    if req.prompt.is_empty() {
        return Ok(Json(json!({"embedding": []})));
    }
    let prompts = vec![Prompt::Text(req.prompt)];
    let vectors = embed_all(&state, arrived, prompts, "prompt", Overflow::Truncate).await?;
    let embedding = vectors
        .into_iter()
        .next()
        .map(|(v, _)| v)
        .unwrap_or_default();
    Ok(Json(json!({ "embedding": embedding })))
}

/// The model, unknown fields and `keep_alive` of an Ollama embedding request. `options` are
/// accepted and unused: no sampling happens.
async fn check_ollama(
    server: &Server,
    model: &str,
    extra: &Map<String, Value>,
    keep_alive: Option<&Value>,
) -> Result<AppState> {
    check_unknown(server, extra)?;
    crate::ollama::model_for(server, model, keep_alive).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_little_endian_f32() {
        assert_eq!(base64_f32(&[1.0]), "AACAPw==");
    }

    #[test]
    fn shortening_renormalises_and_bounds_dimensions() {
        let mut v = vec![(vec![0.6, 0.0, 0.8], Usage::default())];
        shorten(&mut v, Some(2), 3).unwrap();
        assert_eq!(v[0].0, vec![1.0, 0.0]);
        let err = shorten(&mut v, Some(4), 3).unwrap_err().to_string();
        assert!(err.contains("1..=3"), "{err}");
        assert!(shorten(&mut v, Some(0), 3).is_err());
    }
}
