//! The web page and its figures: `GET /` serves the embedded page (no API key needed, even
//! when the server has one) and `GET /v1/server/stats` reports a chat request's tokens,
//! latency percentiles and the loaded model. The page itself is driven in a real browser by
//! tests/web (Node + Chromium).

mod common;

use common::{chat_body, client, engine, get, post, shared, smollm2, spawn, MODEL};
use serde_json::{json, Value};

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_as_html() {
    let Some(_) = smollm2() else { return };
    let r = client()
        .get(format!("{}/", shared()))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 200);
    let ct = r.headers()["content-type"]
        .to_str()
        .unwrap_or("")
        .to_string();
    assert_eq!(ct, "text/html; charset=utf-8");
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap_or("")
        .to_string();
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    let html = r.text().await.expect("body");
    assert!(html.starts_with("<!doctype html>"), "{}", &html[..80]);
    for id in [
        "id=\"app\"",
        "id=\"model\"",
        "id=\"send\"",
        "id=\"dashboard\"",
    ] {
        assert!(html.contains(id), "{id} missing");
    }
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stats_count_a_chat() {
    let Some(_) = smollm2() else { return };
    let base = shared();
    let body = chat_body("Say hello.", json!({"max_tokens": 8, "temperature": 0}));
    let (status, reply) = post(base, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{reply}");
    let (status, text) = get(base, "/v1/server/stats").await;
    assert_eq!(status, 200, "{text}");
    let s: Value = serde_json::from_str(&text).expect("json");
    assert!(s["ttft_ms"]["count"].as_u64() >= Some(1), "{s}");
    assert!(s["ttft_ms"]["p50"].as_f64().is_some_and(|v| v > 0.0), "{s}");
    assert!(s["tokens"]["generated"].as_u64() >= Some(1), "{s}");
    assert!(s["tokens"]["prompt"].as_u64() >= Some(1), "{s}");
    assert!(s["requests"]["finished"].as_u64() >= Some(1), "{s}");
    assert!(s["kv"]["blocks_total"].as_u64() > Some(0), "{s}");
    let usage = s["kv"]["usage"].as_f64().unwrap_or(-1.0);
    assert!((0.0..=1.0).contains(&usage), "{s}");
    assert!(s["uptime_s"].is_u64(), "{s}");
    let models = s["models"].as_array().expect("models");
    assert_eq!(models.len(), 1, "{s}");
    assert_eq!(models[0]["name"], MODEL);
    assert_eq!(models[0]["loaded"], true);
    assert!(models[0]["bytes"].as_u64() > Some(0), "{s}");
    assert!(
        models[0]["device"].as_str().is_some_and(|d| !d.is_empty()),
        "{s}"
    );
}

/// With an API key the page still loads (it asks for the key), the figures do not.
#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_needs_no_key_but_the_stats_do() {
    let Some(_) = smollm2() else { return };
    let cfg = kr_http::ServerConfig {
        api_keys: vec!["sesame".into()],
        ..Default::default()
    };
    let server = spawn(engine(|_| {}), cfg);
    let (status, html) = get(&server.base, "/").await;
    assert_eq!(status, 200);
    assert!(html.contains("id=\"api-key\""));
    let (status, _) = get(&server.base, "/v1/server/stats").await;
    assert_eq!(status, 401);
    let r = client()
        .get(format!("{}/v1/server/stats", server.base))
        .bearer_auth("sesame")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 200);
    let s: Value = r.json().await.expect("json");
    assert_eq!(
        s["ttft_ms"],
        json!({"p50": null, "p90": null, "p99": null, "count": 0})
    );
    server.join().expect("server stops");
}
