//! Optional API keys: when any is configured, every route but the probes and the web page
//! `/` (which asks for the key itself) needs `Authorization: Bearer <key>`; keys are
//! compared in constant time; 401 JSON otherwise.

use crate::error::ApiError;
use crate::state::Server as AppState;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

/// True when `given` equals `expected`, taking the same time for every `given` of a length.
pub fn key_matches(given: &str, expected: &str) -> bool {
    given.as_bytes().ct_eq(expected.as_bytes()).into()
}

/// True when `given` is one of `keys`; every key is compared, so the time taken does not
/// reveal which one matched.
pub fn any_key_matches(given: &str, keys: &[String]) -> bool {
    keys.iter()
        .fold(false, |found, k| key_matches(given, k) | found)
}

pub async fn require_key(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let cfg = state.cfg();
    let keys = &cfg.api_keys;
    if keys.is_empty() {
        return Ok(next.run(req).await);
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(k) if any_key_matches(k, keys) => Ok(next.run(req).await),
        _ => Err(ApiError::Unauthorized),
    }
}

fn bearer(req: &Request) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Guards /admin/*: with an admin key, only that key (401 otherwise); without
/// one, open when no API key is set, and disabled (403) when API keys are set.
pub async fn require_admin(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let cfg = state.cfg();
    match (&cfg.admin_key, cfg.api_keys.is_empty()) {
        (Some(admin), _) => match bearer(&req) {
            Some(k) if key_matches(k, admin) => Ok(next.run(req).await),
            _ => Err(ApiError::Unauthorized),
        },
        (None, true) => Ok(next.run(req).await),
        (None, false) => Err(ApiError::Forbidden(
            "admin routes are disabled: API keys are set but no admin key (--admin-key or KR_SERVE_ADMIN_KEY)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_exactly() {
        assert!(key_matches("secret", "secret"));
        assert!(!key_matches("secret2", "secret"));
        assert!(!key_matches("secreT", "secret"));
        assert!(!key_matches("", "secret"));
        let keys = vec!["a1".to_string(), "b2".to_string()];
        assert!(any_key_matches("b2", &keys));
        assert!(!any_key_matches("c3", &keys));
    }
}
