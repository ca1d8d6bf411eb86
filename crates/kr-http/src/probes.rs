//! Probes and metrics: /health (the process answers), /ready (a model is loaded and the
//! engine's circuit breaker is not open: 503 while it is),
//! /metrics (Prometheus text), and the JSON 404 for unknown routes.

use crate::error::ApiError;
use crate::state::Server;
use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::Json;
use kr_engine::{BreakerState, EngineStats};
use serde_json::{json, Value};

/// GET /health
pub async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// GET /ready: the models configured to load at start are loaded before the server listens;
/// it is not ready while a loaded model's circuit breaker is open (its steps keep failing).
pub async fn ready(State(server): State<Server>) -> axum::response::Response {
    let loaded = server.pool.loaded();
    let open: Vec<&str> = loaded
        .iter()
        .filter(|(_, e)| e.breaker_state() == BreakerState::Open)
        .map(|(n, _)| n.as_str())
        .collect();
    let names: Vec<&str> = loaded.iter().map(|(n, _)| n.as_str()).collect();
    if !open.is_empty() {
        let body = json!({"status": "unavailable", "models": names, "breaker_open": open,
            "reason": "a model's circuit breaker is open after repeated failed steps"});
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    let default = server.default_model();
    let model = names.first().copied().unwrap_or(&default);
    Json(json!({"status": "ready", "model": model, "models": names})).into_response()
}

/// GET /metrics: engine series summed over the loaded models (histograms and scheduler
/// series of the first), plus per-model series labelled `model`.
pub async fn metrics(State(server): State<Server>) -> impl IntoResponse {
    let loaded = server.pool.loaded();
    let stats: Vec<&EngineStats> = loaded.iter().map(|(_, e)| e.stats()).collect();
    let mut text = server.metrics.render(&stats, server.permits.in_flight());
    let joined = server
        .coalescer
        .joined
        .load(std::sync::atomic::Ordering::Relaxed);
    crate::metrics::counter(
        &mut text,
        "kr_coalesced_requests_total",
        "Requests that joined an identical generation in flight instead of running again.",
        joined,
    );
    crate::metrics::models(&mut text, &server.pool, &loaded);
    if server.cfg().vllm_metrics {
        for (name, engine) in &loaded {
            crate::metrics::vllm_aliases(&mut text, name, &engine.stats().snapshot());
        }
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
