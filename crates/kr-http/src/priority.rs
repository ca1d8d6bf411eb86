//! Per-request priority from the `X-Priority` header, handled in this one place:
//! a middleware parses the header (400 naming it on a bad value) and runs the rest of the
//! request inside a task-local scope, so [`current`] gives [`crate::generate::launch`] the
//! priority without any handler knowing about it.
//!
//! Invariant: a request without the header is `normal`, exactly as before priorities.

use crate::error::ApiError;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use kr_engine::Priority;

/// The header's name.
pub const HEADER: &str = "x-priority";

tokio::task_local! {
    static PRIORITY: Priority;
}

/// The priority of the request being handled (`normal` outside a request).
pub fn current() -> Priority {
    PRIORITY.try_with(|p| *p).unwrap_or_default()
}

/// Parses `X-Priority` (low | normal | high | urgent, or 0..=3) for the rest of the request.
pub async fn from_header(req: Request, next: Next) -> Response {
    let Some(value) = req.headers().get(HEADER) else {
        return next.run(req).await;
    };
    let parsed = value
        .to_str()
        .map_err(|_| "invalid priority: not ASCII".to_string())
        .and_then(|v| v.parse::<Priority>());
    match parsed {
        Ok(p) => PRIORITY.scope(p, next.run(req)).await,
        Err(msg) => ApiError::bad("X-Priority", msg).into_response(),
    }
}
