//! Probes and metrics: /health (the process answers), /ready (a model is loaded and the
//! engine's circuit breaker is not open: 503 while it is),
//! /metrics (Prometheus text), and the JSON 404 for unknown routes.

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::Json;
use kr_engine::BreakerState;
use serde_json::{json, Value};

/// GET /health
pub async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// GET /ready: the engine is started with its model loaded before the server listens; it
/// is not ready while its circuit breaker is open (steps keep failing).
pub async fn ready(State(state): State<AppState>) -> axum::response::Response {
    let model = state.model_name();
    match state.engine.breaker_state() {
        BreakerState::Open => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "model": model,
                "reason": "the engine's circuit breaker is open after repeated failed steps"})),
        )
            .into_response(),
        state => Json(json!({"status": "ready", "model": model, "circuit_breaker": state}))
            .into_response(),
    }
}

/// GET /metrics
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut text = state
        .metrics
        .render(state.engine.stats(), state.permits.in_flight());
    let joined = state
        .coalescer
        .joined
        .load(std::sync::atomic::Ordering::Relaxed);
    crate::metrics::counter(
        &mut text,
        "kr_coalesced_requests_total",
        "Requests that joined an identical generation in flight instead of running again.",
        joined,
    );
    if state.cfg().vllm_metrics {
        let s = state.engine.stats().snapshot();
        crate::metrics::vllm_aliases(&mut text, state.model_name(), &s);
    }
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
