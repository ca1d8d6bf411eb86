//! The web page and its figures: `GET /` serves the chat and dashboard page (one HTML file
//! with its CSS and JS inline, embedded in the binary: no CDN, no other asset), and
//! `GET /v1/server/stats` the JSON it polls every second — the engine counters and gauges
//! summed over the loaded models (as /metrics sums them), TTFT and time-per-output-token
//! percentiles from the server's histograms, and the configured models.
//!
//! The page is outside the API key (it holds no data; it asks for the key when the API
//! answers 401); /v1/server/stats is behind it like /metrics.

use crate::state::{unix_now, Server};
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use kr_engine::{HistogramSnapshot, StatsSnapshot};
use serde_json::{json, Value};

/// The page, embedded at build time.
const INDEX_HTML: &str = include_str!("web/index.html");

/// What the page may load: itself, its inline script and style, and requests to this
/// server (so a CDN could not sneak in).
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'";

/// GET /: the chat and dashboard page.
pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        INDEX_HTML,
    )
}

/// GET /v1/server/stats: the dashboard's figures (see the module header).
pub async fn stats(State(server): State<Server>) -> Json<Value> {
    let loaded = server.pool.loaded();
    let mut s = StatsSnapshot::default();
    for (_, engine) in &loaded {
        s.add(&engine.stats().snapshot());
    }
    let models: Vec<Value> = server
        .pool
        .status()
        .iter()
        .map(|m| {
            let device = loaded
                .iter()
                .find(|(n, _)| *n == m.name)
                .map(|(_, e)| e.info().device.clone());
            json!({"name": m.name, "loaded": m.loaded, "bytes": m.bytes,
                   "active": m.active, "device": device})
        })
        .collect();
    let metrics = &server.metrics;
    Json(json!({
        "uptime_s": unix_now().saturating_sub(server.started),
        "requests": {
            "active": server.permits.in_flight(),
            "finished": s.requests_finished,
            "aborted": s.requests_aborted,
        },
        "tokens": {"prompt": s.prompt_tokens, "generated": s.generation_tokens},
        "queue": {"waiting": s.waiting, "running": s.running},
        "kv": {
            "blocks_used": s.kv_blocks_used,
            "blocks_total": s.kv_blocks_total,
            "usage": kv_usage(&s),
        },
        "ttft_ms": percentiles_ms(&metrics.ttft.snapshot()),
        "tpot_ms": percentiles_ms(&metrics.inter_token.snapshot()),
        "models": models,
    }))
}

/// The share of KV blocks in use, 0 to 1 (0 with no pool).
fn kv_usage(s: &StatsSnapshot) -> f64 {
    if s.kv_blocks_total == 0 {
        return 0.0;
    }
    s.kv_blocks_used as f64 / s.kv_blocks_total as f64
}

/// p50/p90/p99 in milliseconds (null without observations) and the count.
fn percentiles_ms(h: &HistogramSnapshot) -> Value {
    let ms = |q: f64| h.quantile(q).map(|s| s * 1e3);
    json!({"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "count": h.count})
}

#[cfg(test)]
mod tests {
    use super::*;
    use kr_engine::Histogram;
    use std::time::Duration;

    #[test]
    fn percentiles_are_null_until_observed() {
        let h = Histogram::default();
        let v = percentiles_ms(&h.snapshot());
        assert_eq!(
            v,
            json!({"p50": null, "p90": null, "p99": null, "count": 0})
        );
        h.observe(Duration::from_millis(20));
        let v = percentiles_ms(&h.snapshot());
        assert_eq!(v["count"], 1);
        let p50 = v["p50"].as_f64().unwrap_or(0.0);
        assert!(p50 > 10.0 && p50 <= 25.0, "{v}");
    }

    #[test]
    fn the_page_is_embedded() {
        assert!(INDEX_HTML.contains("id=\"app\""));
        assert!(!INDEX_HTML.contains("http://") && !INDEX_HTML.contains("https://"));
    }
}
