//! kr-http: the HTTP face of the engine, built on axum.
//!
//! The server knows the engine only through [`kr_engine::EngineHandle`]; it never sees a
//! backend. Every route is a thin adapter: parse the wire type (a 4xx JSON error naming the
//! problem on any failure), build `SamplingParams` and prompts, admit (429 when full),
//! submit, then stream (SSE / NDJSON) or collect. /admin/config reads and changes the
//! runtime-safe settings ([`config`]); /v1/scheduler/stats reports the scheduler policies
//! ([`sched_stats`]); `X-Priority` sets a request's priority ([`priority`]). `/` is the
//! embedded chat and dashboard page, fed by /v1/server/stats ([`dashboard`]).
//! See docs/ARCHITECTURE.md.

pub mod admin;
pub mod auth;
pub mod coalesce;
pub mod config;
pub mod dashboard;
pub mod embeddings;
pub mod error;
pub mod extract;
pub mod generate;
pub mod listen;
pub mod metrics;
pub mod ollama;
pub mod openai;
pub mod priority;
pub mod probes;
pub mod pull;
pub mod reasoning;
pub mod sched_stats;
pub mod state;
pub mod stream;
pub mod tokenize;
pub mod tools;

pub use error::ApiError;
pub use state::{AppState, Server, ServerConfig, Shared};

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use kr_engine::{EngineHandle, ModelPool};
use std::future::Future;
use tokio::net::TcpListener;

/// Every route of the server over `state`.
pub fn router(state: Server) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(openai::chat::chat_completions))
        .route("/v1/completions", post(openai::completions::completions))
        .route("/v1/embeddings", post(embeddings::openai_embeddings))
        .route("/v1/models", get(openai::list_models))
        .route("/v1/models/{model}", get(openai::get_model))
        .route("/api/generate", post(ollama::generate))
        .route("/api/chat", post(ollama::chat))
        .route("/api/embed", post(embeddings::ollama_embed))
        .route("/api/embeddings", post(embeddings::ollama_embeddings))
        .route("/api/tags", get(ollama::tags))
        .route("/api/pull", post(pull::pull))
        .route("/api/delete", axum::routing::delete(pull::delete))
        .route("/api/show", post(ollama::show))
        .route("/api/ps", get(ollama::ps))
        .route("/api/version", get(ollama::version))
        .route("/tokenize", post(tokenize::tokenize))
        .route("/detokenize", post(tokenize::detokenize))
        .route("/metrics", get(probes::metrics))
        .route("/v1/scheduler/stats", get(sched_stats::stats))
        .route("/v1/server/stats", get(dashboard::stats))
        .route_layer(axum::middleware::from_fn(priority::from_header))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ));
    let admin = Router::new()
        .route(
            "/admin/config",
            get(admin::get_config).patch(admin::patch_config),
        )
        .route("/admin/models", get(admin::models))
        .route("/admin/models/{name}/load", post(admin::load_model))
        .route("/admin/models/{name}/unload", post(admin::unload_model))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_admin,
        ));
    Router::new()
        .route("/", get(dashboard::page))
        .route("/health", get(probes::health))
        .route("/ready", get(probes::ready))
        .merge(api)
        .merge(admin)
        .fallback(probes::not_found)
        .layer(DefaultBodyLimit::max(state.cfg().max_body_bytes))
        .with_state(state)
}

/// Serves on `listener` until `shutdown` resolves, then stops accepting connections, lets
/// in-flight requests (streams included) finish until the shutdown deadline and cancels
/// the rest (see `listen.rs`).
pub async fn serve(
    listener: TcpListener,
    engine: EngineHandle,
    cfg: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_models(listener, ModelPool::single(engine), cfg, shutdown).await
}

/// [`serve`] for the models of `pool` (loaded on first use, unloaded when their keep-alive
/// runs out: checked every second).
pub async fn serve_models(
    listener: TcpListener,
    pool: ModelPool,
    cfg: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let inputs = cfg.inputs.clone().filter(|i| i.file.is_some());
    let state = state::Shared::new(pool, cfg);
    let sweeper = state.pool.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            let pool = sweeper.clone();
            let _ = tokio::task::spawn_blocking(move || pool.sweep()).await;
        }
    });
    #[cfg(unix)]
    if let Some(inputs) = inputs {
        tokio::spawn(admin::reload_on_sighup(state.clone(), inputs));
    }
    #[cfg(not(unix))]
    let _ = inputs;
    let limits = state.cfg().conn.clone();
    let pool = state.pool.clone();
    let at_deadline = move || {
        for (_, engine) in pool.loaded() {
            engine.abort_all(
                "the server shut down: this request was cancelled at the shutdown deadline",
            );
        }
    };
    listen::serve_connections(listener, router(state), limits, shutdown, at_deadline).await
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received: finishing in-flight requests");
}
