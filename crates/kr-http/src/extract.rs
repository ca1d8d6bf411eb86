//! Request bodies: a JSON extractor whose every failure is a 4xx JSON error naming the
//! problem (oversized body → 413; invalid UTF-8, malformed JSON, wrong types → 400 with the
//! path of the offending field as `param`), plus the unknown-field policy.

use crate::error::{ApiError, OllamaError};
use crate::state::{Server, Shared};
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// A JSON body parsed into `T`, rejected with an OpenAI-shaped [`ApiError`].
pub struct ApiJson<T>(pub T);

/// A JSON body parsed into `T`, rejected with an Ollama-shaped [`OllamaError`].
pub struct OllamaJson<T>(pub T);

/// Parses a body: UTF-8 first, then JSON into `T` with the failing field's path.
pub fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let text = std::str::from_utf8(bytes).map_err(|e| ApiError::BadRequest {
        message: format!(
            "request body is not valid UTF-8 (invalid byte at offset {})",
            e.valid_up_to()
        ),
        param: None,
        code: Some("invalid_utf8"),
    })?;
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let param = (path != "." && !path.is_empty()).then_some(path);
        let message = match (&param, inner.classify()) {
            (_, serde_json::error::Category::Syntax | serde_json::error::Category::Eof) => {
                format!("request body is not valid JSON: {inner}")
            }
            (Some(p), _) => format!("invalid value for `{p}`: {inner}"),
            (None, _) => format!("invalid request body: {inner}"),
        };
        ApiError::BadRequest {
            message,
            param,
            code: None,
        }
    })
}

/// The request body, within `max_body_bytes` and `body_read_timeout` (408 when a client
/// sends it too slowly).
async fn read_body(req: Request, state: &Shared) -> Result<Bytes, ApiError> {
    let limit = state.cfg().body_read_timeout;
    let read = tokio::time::timeout(limit, Bytes::from_request(req, state)).await;
    let Ok(read) = read else {
        return Err(ApiError::BodyTimeout { limit });
    };
    read.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge {
                limit: state.cfg().max_body_bytes,
            }
        } else {
            ApiError::BadRequest {
                message: format!("cannot read the request body: {r}"),
                param: None,
                code: None,
            }
        }
    })
}

impl<T: DeserializeOwned> FromRequest<Server> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &Server) -> Result<Self, ApiError> {
        let bytes = read_body(req, state).await?;
        Ok(ApiJson(parse_body(&bytes)?))
    }
}

impl<T: DeserializeOwned> FromRequest<Server> for OllamaJson<T> {
    type Rejection = OllamaError;
    async fn from_request(req: Request, state: &Server) -> Result<Self, OllamaError> {
        let bytes = read_body(req, state).await?;
        Ok(OllamaJson(parse_body(&bytes)?))
    }
}

/// Fields a request carried that this server does not know: rejected in strict mode
/// (400 naming the first one), otherwise logged and ignored.
pub fn check_unknown(state: &Shared, extra: &Map<String, Value>) -> Result<(), ApiError> {
    check_unknown_in(state, "", extra)
}

/// [`check_unknown`] for the fields of a nested object at `path` (e.g. `messages[2]`).
pub fn check_unknown_in(
    state: &Shared,
    path: &str,
    extra: &Map<String, Value>,
) -> Result<(), ApiError> {
    let Some(first) = extra.keys().next() else {
        return Ok(());
    };
    if state.cfg().strict {
        let name = match path.is_empty() {
            true => first.clone(),
            false => format!("{path}.{first}"),
        };
        return Err(ApiError::BadRequest {
            message: format!("unknown or unsupported field `{name}` (strict mode)"),
            param: Some(name),
            code: Some("unknown_field"),
        });
    }
    let names: Vec<&String> = extra.keys().collect();
    tracing::warn!(fields = ?names, path, "ignoring unknown request fields");
    Ok(())
}

/// The keys of the JSON object `v` at `path` outside `allowed`, as [`check_unknown_in`]
/// treats them (nothing to check when `v` is not an object).
pub fn check_keys(state: &Shared, path: &str, v: &Value, allowed: &[&str]) -> Result<(), ApiError> {
    let Some(obj) = v.as_object() else {
        return Ok(());
    };
    let extra: Map<String, Value> = obj
        .iter()
        .filter(|(k, _)| !allowed.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    check_unknown_in(state, path, &extra)
}
