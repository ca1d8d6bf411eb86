//! Ollama's POST /api/pull and DELETE /api/delete over the Hugging Face Hub (kr-hub).
//!
//! `/api/pull {"model": "ORG/REPO[:FILE]"}` downloads into the Hugging Face cache (resumable,
//! sha256-checked; see kr-hub) on a blocking thread and streams Ollama's NDJSON progress:
//! `pulling manifest`, `downloading FILE` with `total` and `completed`, `verifying sha256
//! digest`, then `success`, after which the model is served under its name (added to the
//! pool with the settings of the first configured model). `stream: false` answers once at
//! the end. A failure is the stream's last line, `{"error": "..."}` (or a 4xx/5xx when not
//! streaming). `/api/delete {"model": "ORG/REPO"}` removes a pulled repository from the
//! cache (404 when it is not there).

use crate::error::{ApiError, OllamaError};
use crate::extract::{check_unknown, OllamaJson};
use crate::state::Server;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use kr_engine::ModelSpec;
use kr_hub::{Hub, ModelRef, PullEvent};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::convert::Infallible;

#[derive(Debug, Deserialize)]
pub struct PullRequest {
    pub model: Option<String>,
    pub name: Option<String>,
    pub stream: Option<bool>,
    pub insecure: Option<bool>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn model_ref(model: Option<String>) -> Result<ModelRef, ApiError> {
    let spec = model.unwrap_or_default();
    ModelRef::parse(&spec).ok_or_else(|| {
        ApiError::bad(
            "model",
            format!("`{spec}` is not a Hugging Face model: use ORG/REPO or ORG/REPO:FILE"),
        )
    })
}

fn hub() -> Result<Hub, ApiError> {
    Hub::from_env().map_err(|e| ApiError::Internal(e.to_string()))
}

/// One progress event as Ollama's NDJSON line.
fn line(ev: &PullEvent) -> Value {
    match ev {
        PullEvent::Manifest { .. } => json!({"status": "pulling manifest"}),
        PullEvent::Progress {
            file,
            completed,
            total,
        } => json!({"status": format!("downloading {file}"), "digest": file,
            "total": total, "completed": completed}),
        PullEvent::Verifying { sha256, .. } => json!({"status": "verifying sha256 digest",
            "digest": sha256.as_ref().map(|d| format!("sha256:{d}"))}),
    }
}

/// POST /api/pull
pub async fn pull(
    State(server): State<Server>,
    OllamaJson(req): OllamaJson<PullRequest>,
) -> Result<Response, OllamaError> {
    check_unknown(&server, &req.extra)?;
    let m = model_ref(req.model.or(req.name))?;
    let hub = hub()?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let pool = server.pool.clone();
    let work = tokio::task::spawn_blocking(move || {
        let progress = tx.clone();
        let mut on = |ev: PullEvent| {
            let _ = progress.send(line(&ev));
        };
        let done = hub
            .pull(&m, &mut on)
            .map_err(|e| e.to_string())
            .and_then(|path| {
                let template = pool.specs().into_iter().next().map(|s| s.engine);
                let mut cfg = template.unwrap_or_else(|| kr_engine::EngineConfig::new(&path));
                cfg.model = path;
                let name = m.served_name();
                match pool.resolve(&name) {
                    Some(_) => Ok(()),
                    None => pool
                        .add(ModelSpec::new(name, cfg))
                        .map_err(|e| e.to_string()),
                }
            });
        let last = match done {
            Ok(()) => json!({"status": "success"}),
            Err(e) => json!({"error": e}),
        };
        let _ = tx.send(last);
    });
    if req.stream == Some(false) {
        let mut last = json!({});
        while let Some(v) = rx.recv().await {
            last = v;
        }
        let _ = work.await;
        return match last.get("error").and_then(Value::as_str) {
            Some(e) => Err(ApiError::Internal(e.to_string()).into()),
            None => Ok(Json(last).into_response()),
        };
    }
    let body = async_stream(rx);
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response())
}

fn async_stream(
    rx: tokio::sync::mpsc::UnboundedReceiver<Value>,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
    futures_util::stream::unfold(rx, |mut rx| async move {
        let v = rx.recv().await?;
        Some((Ok(crate::stream::ndjson(&v)), rx))
    })
}

#[derive(Debug, Deserialize)]
pub struct DeleteRequest {
    pub model: Option<String>,
    pub name: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// DELETE /api/delete
pub async fn delete(
    State(server): State<Server>,
    OllamaJson(req): OllamaJson<DeleteRequest>,
) -> Result<Response, OllamaError> {
    check_unknown(&server, &req.extra)?;
    let m = model_ref(req.model.or(req.name))?;
    let hub = hub()?;
    let repo = m.repo.clone();
    let removed = tokio::task::spawn_blocking(move || hub.delete(&m))
        .await
        .map_err(|e| ApiError::Internal(format!("delete task failed: {e}")))?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    match removed {
        true => Ok(Json(json!({})).into_response()),
        false => Err(ApiError::NotFound {
            message: format!("model `{repo}` is not in the cache"),
            param: Some("model"),
            code: "model_not_found",
        }
        .into()),
    }
}
