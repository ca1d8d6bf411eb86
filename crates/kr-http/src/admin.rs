//! /admin/config: GET answers the effective config with the source of each
//! value; PATCH takes a JSON object of runtime-safe keys, validates every one and applies
//! them all at once, or none (400 naming the key). SIGHUP re-reads the config file.
//! /admin/models: GET lists every configured model and its state; POST
//! /admin/models/{name}/load loads one (making room as a request would), POST
//! /admin/models/{name}/unload unloads an idle one (409 while it serves requests).

use crate::config::{ConfigError, Inputs};
use crate::error::ApiError;
use crate::state::Server as AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use serde_json::Value;

fn config_error(e: ConfigError) -> ApiError {
    let param = match &e {
        ConfigError::Invalid { key, .. }
        | ConfigError::Unknown { key, .. }
        | ConfigError::NotRuntimeSafe { key } => Some(key.clone()),
        _ => None,
    };
    ApiError::BadRequest {
        message: e.to_string(),
        param,
        code: Some("invalid_config"),
    }
}

pub async fn get_config(State(state): State<AppState>) -> Json<Value> {
    Json(state.effective().to_json())
}

pub async fn patch_config(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad("body", format!("the body is not JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(ApiError::bad(
            "body",
            "the body must be a JSON object of config keys",
        ));
    };
    let next = state.effective().patch(&map).map_err(config_error)?;
    state.apply(next.clone());
    tracing::info!(keys = ?map.keys().collect::<Vec<_>>(), "config changed by PATCH /admin/config");
    Ok(Json(next.to_json()))
}

/// GET /admin/models
pub async fn models(State(state): State<AppState>) -> Json<Value> {
    let (loads, evictions) = state.pool.counters();
    Json(serde_json::json!({
        "budget_bytes": state.pool.budget(),
        "loads": loads,
        "evictions": evictions,
        "models": state.pool.status(),
    }))
}

/// POST /admin/models/{name}/load
pub async fn load_model(
    State(state): State<AppState>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Json<Value>, ApiError> {
    let loaded = state.model(&name, None).await?;
    Ok(Json(
        serde_json::json!({"model": loaded.model_name(), "loaded": true}),
    ))
}

/// POST /admin/models/{name}/unload
pub async fn unload_model(
    State(state): State<AppState>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Json<Value>, ApiError> {
    let pool = state.pool.clone();
    let n = name.clone();
    let was = tokio::task::spawn_blocking(move || pool.unload(&n))
        .await
        .map_err(|e| ApiError::Internal(format!("unload task failed: {e}")))?
        .map_err(|e| match e {
            kr_engine::EngineError::ModelBusy { .. } => ApiError::Conflict(e.to_string()),
            other => other.into(),
        })?;
    Ok(Json(serde_json::json!({"model": name, "unloaded": was})))
}

/// Re-reads `inputs` (its file) and applies the runtime-safe keys; an invalid file is
/// logged and changes nothing.
pub fn reload(state: &AppState, inputs: &Inputs) -> Result<(), ConfigError> {
    let (next, ignored) = state.effective().reload(inputs)?;
    if !ignored.is_empty() {
        tracing::warn!(
            ?ignored,
            "config reload: these keys need a restart; kept as they were"
        );
    }
    state.apply(next);
    Ok(())
}

/// Reloads on every SIGHUP until the process ends.
#[cfg(unix)]
pub async fn reload_on_sighup(state: AppState, inputs: Inputs) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; config reload disabled");
        return;
    };
    while hup.recv().await.is_some() {
        match reload(&state, &inputs) {
            Ok(()) => eprintln!("kr-serve: config reloaded"),
            Err(e) => eprintln!("kr-serve: config reload rejected, keeping the old config: {e}"),
        }
    }
}
