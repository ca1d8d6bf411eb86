//! Probes and metrics: /health (the process answers), /ready (a model is loaded),
//! /metrics (Prometheus text), and the JSON 404 for unknown routes.

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::State;
use axum::http::{header, Uri};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

/// GET /health
pub async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// GET /ready: the engine is started with its model loaded before the server listens.
pub async fn ready(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"status": "ready", "model": state.model_name()}))
}

/// GET /metrics
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let text = state
        .metrics
        .render(state.engine.stats(), state.permits.in_flight());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

/// Any route that does not exist.
pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound {
        message: format!("no route for {}", uri.path()),
        param: None,
        code: "not_found",
    }
}
