//! The one error type of the server, mapped to HTTP once (`IntoResponse`).
//!
//! OpenAI routes answer `{"error":{"message","type","param","code"}}`; Ollama routes wrap
//! the same error in [`OllamaError`], which answers Ollama's `{"error":"message"}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use kr_core::CoreError;
use kr_engine::EngineError;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or a value is out of range.
    #[error("{message}")]
    BadRequest {
        message: String,
        param: Option<String>,
        code: Option<&'static str>,
    },
    #[error("{message}")]
    NotFound {
        message: String,
        param: Option<&'static str>,
        code: &'static str,
    },
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request body did not arrive within {limit:?} (body_read_timeout)")]
    BodyTimeout { limit: std::time::Duration },
    #[error("the server is at capacity ({capacity} requests running or queued); retry later")]
    Overloaded { capacity: usize },
    #[error("missing or invalid API key; send `Authorization: Bearer <key>`")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    /// The request conflicts with the server's state (unloading a model in use).
    #[error("{0}")]
    Conflict(String),
    #[error("the engine has stopped")]
    Unavailable,
    /// Temporarily unable to serve (the engine's circuit breaker is open, or the memory a
    /// model needs is held by busy models): 503 with `Retry-After`.
    #[error("{message}")]
    Busy {
        message: String,
        code: &'static str,
        retry_after: std::time::Duration,
    },
    #[error("the request exceeded the server's time limit of {limit:?}")]
    Timeout { limit: std::time::Duration },
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

impl ApiError {
    pub fn bad(param: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            message: message.into(),
            param: Some(param.into()),
            code: None,
        }
    }

    pub fn unknown_model(name: &str, available: &str) -> Self {
        ApiError::NotFound {
            message: format!("model `{name}` does not exist; available: {available}"),
            param: Some("model"),
            code: "model_not_found",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable | ApiError::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            ApiError::BadRequest { .. }
            | ApiError::PayloadTooLarge { .. }
            | ApiError::BodyTimeout { .. } => "invalid_request_error",
            ApiError::NotFound { .. } => "not_found_error",
            ApiError::Overloaded { .. } => "rate_limit_error",
            ApiError::Unauthorized => "authentication_error",
            ApiError::Forbidden(_) => "permission_error",
            ApiError::Conflict(_) => "conflict_error",
            ApiError::Unavailable
            | ApiError::Busy { .. }
            | ApiError::Timeout { .. }
            | ApiError::Internal(_) => "server_error",
        }
    }

    fn param_and_code(&self) -> (Option<String>, Option<&'static str>) {
        match self {
            ApiError::BadRequest { param, code, .. } => (param.clone(), *code),
            ApiError::NotFound { param, code, .. } => (param.map(String::from), Some(code)),
            ApiError::PayloadTooLarge { .. } => (None, Some("payload_too_large")),
            ApiError::BodyTimeout { .. } => (None, Some("body_timeout")),
            ApiError::Overloaded { .. } => (None, Some("server_overloaded")),
            ApiError::Unauthorized => (None, Some("invalid_api_key")),
            ApiError::Timeout { .. } => (None, Some("timeout")),
            ApiError::Busy { code, .. } => (None, Some(code)),
            _ => (None, None),
        }
    }

    /// Adds headers some errors need (Retry-After on 429, WWW-Authenticate on 401).
    fn decorate(&self, resp: &mut Response) {
        let h = resp.headers_mut();
        match self {
            ApiError::Overloaded { .. } => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::Unauthorized => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::Busy { retry_after, .. } => {
                let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            _ => {}
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Core(CoreError::InvalidParam { param, .. }) => ApiError::BadRequest {
                message: e.to_string(),
                param: Some(param.to_string()),
                code: None,
            },
            EngineError::Core(CoreError::PromptTooLong { .. })
            | EngineError::Core(CoreError::PoolTooSmall { .. }) => ApiError::BadRequest {
                message: e.to_string(),
                param: Some("messages".into()),
                code: Some("context_length_exceeded"),
            },
            EngineError::Core(CoreError::EmptyPrompt) => ApiError::bad("prompt", e.to_string()),
            EngineError::NoChatTemplate => ApiError::bad("messages", e.to_string()),
            EngineError::Grammar { field, .. } => ApiError::bad(field, e.to_string()),
            EngineError::Stopped => ApiError::Unavailable,
            EngineError::CircuitOpen { retry_after } => ApiError::Busy {
                message: e.to_string(),
                code: "circuit_open",
                retry_after,
            },
            EngineError::ModelBusy { .. } => ApiError::Busy {
                message: e.to_string(),
                code: "model_busy",
                retry_after: std::time::Duration::from_secs(5),
            },
            EngineError::UnknownModel { .. } => ApiError::NotFound {
                message: e.to_string(),
                param: Some("model"),
                code: "model_not_found",
            },
            EngineError::ModelTooLarge { .. } => ApiError::BadRequest {
                message: e.to_string(),
                param: Some("model".into()),
                code: Some("model_too_large"),
            },
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        EngineError::Core(e).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (param, code) = self.param_and_code();
        if self.status().is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let body = json!({"error": {
            "message": self.to_string(),
            "type": self.kind(),
            "param": param,
            "code": code,
        }});
        let mut resp = (self.status(), axum::Json(body)).into_response();
        self.decorate(&mut resp);
        resp
    }
}

/// An [`ApiError`] in Ollama's shape: `{"error": "message"}`.
#[derive(Debug)]
pub struct OllamaError(pub ApiError);

impl From<ApiError> for OllamaError {
    fn from(e: ApiError) -> Self {
        OllamaError(e)
    }
}

impl From<EngineError> for OllamaError {
    fn from(e: EngineError) -> Self {
        OllamaError(e.into())
    }
}

impl IntoResponse for OllamaError {
    fn into_response(self) -> Response {
        let e = self.0;
        let mut resp = (e.status(), axum::Json(json!({"error": e.to_string()}))).into_response();
        e.decorate(&mut resp);
        resp
    }
}
