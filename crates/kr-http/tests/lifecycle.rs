//! Cancellation and graceful shutdown: a client that goes away frees its KV blocks within a
//! second; SIGTERM-style shutdown lets a running stream finish and refuses new connections;
//! SSE keep-alive comments leave a stream's events intact; `stream_interval` sends runs of
//! tokens.

mod common;
use common::*;
use futures_util::StreamExt;
use kr_http::ServerConfig;
use serde_json::json;
use std::time::{Duration, Instant};

fn long_request(stream: bool) -> serde_json::Value {
    chat_body(
        "Count to ten thousand.",
        json!({"max_tokens": 2000, "ignore_eos": true, "stream": stream}),
    )
}

fn idle(page: &str) -> bool {
    metric(page, "kr_kv_blocks_used") == Some(0.0)
        && metric(page, "kr_requests_running") == Some(0.0)
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test]
async fn dropped_stream_frees_its_blocks_within_a_second() {
    let Some(_) = smollm2() else { return };
    let server = spawn(engine(|_| {}), ServerConfig::default());
    let base = server.base.clone();
    let r = client()
        .post(format!("{base}/v1/chat/completions"))
        .json(&long_request(true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let mut body = r.bytes_stream();
    let mut seen = 0;
    while seen < 2000 {
        seen += body.next().await.expect("chunk").expect("bytes").len();
    }
    let page = get(&base, "/metrics").await.1;
    assert_eq!(metric(&page, "kr_requests_running"), Some(1.0), "{page}");
    assert!(metric(&page, "kr_kv_blocks_used").unwrap() > 0.0);
    drop(body);
    let t0 = Instant::now();
    let page = wait_metrics(&base, Duration::from_secs(5), idle).await;
    assert!(idle(&page), "not idle: {page}");
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(metric(&page, "kr_http_requests_in_flight"), Some(0.0));
    assert_eq!(
        metric(&page, "kr_requests_total{outcome=\"cancelled\"}"),
        Some(1.0)
    );
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test]
async fn dropped_non_stream_request_frees_its_blocks() {
    let Some(_) = smollm2() else { return };
    let server = spawn(engine(|_| {}), ServerConfig::default());
    let base = server.base.clone();
    let c = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let r = c
        .post(format!("{base}/v1/chat/completions"))
        .json(&long_request(false))
        .send()
        .await;
    assert!(r.is_err(), "the request should time out on the client");
    let t0 = Instant::now();
    let page = wait_metrics(&base, Duration::from_secs(5), idle).await;
    assert!(idle(&page), "not idle: {page}");
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t0.elapsed()
    );
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test]
async fn graceful_shutdown_finishes_the_stream_and_refuses_new_connections() {
    let Some(_) = smollm2() else { return };
    let mut server = spawn(engine(|_| {}), ServerConfig::default());
    let base = server.base.clone();
    let req = chat_body(
        "Count to fifty.",
        json!({"max_tokens": 40, "ignore_eos": true, "stream": true}),
    );
    let r = client()
        .post(format!("{base}/v1/chat/completions"))
        .json(&req)
        .send()
        .await
        .unwrap();
    let mut body = r.bytes_stream();
    let mut text = String::from_utf8(body.next().await.unwrap().unwrap().to_vec()).unwrap();
    server.signal_shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = tokio::net::TcpStream::connect(server.addr).await;
    assert!(
        refused.is_err(),
        "a new connection was accepted after shutdown began"
    );
    while let Some(chunk) = body.next().await {
        text.push_str(std::str::from_utf8(&chunk.expect("stream intact")).unwrap());
    }
    let events = sse_events(&text);
    assert_eq!(events.last(), Some(&json!("[DONE]")));
    let finish = events
        .iter()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str());
    assert_eq!(finish, Some("length"));
    server.join().expect("server exits cleanly");
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test]
async fn keep_alive_comments_do_not_disturb_the_stream() {
    let Some(_) = smollm2() else { return };
    let cfg = ServerConfig {
        keep_alive: Duration::from_millis(1),
        ..ServerConfig::default()
    };
    let server = spawn(engine(|_| {}), cfg);
    let req = chat_body(
        "What is the capital of France?",
        json!({"temperature": 0, "max_tokens": 20, "stream": true}),
    );
    let r = client()
        .post(format!("{}/v1/chat/completions", server.base))
        .json(&req)
        .send()
        .await
        .unwrap();
    let body = r.text().await.unwrap();
    assert!(body.contains(": keep-alive\n\n"), "{body}");
    let events = sse_events(&body);
    let text: String = events
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "The capital of France is Paris.");
    assert_eq!(events.last(), Some(&json!("[DONE]")));
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test]
async fn coalesced_stream_sends_runs_of_tokens_with_their_logprobs() {
    let Some(_) = smollm2() else { return };
    let cfg = ServerConfig {
        stream_interval: 4,
        ..ServerConfig::default()
    };
    let server = spawn(engine(|_| {}), cfg);
    let extra = json!({"temperature": 0, "max_tokens": 10, "ignore_eos": true, "logprobs": true});
    let req = chat_body("What is the capital of France?", extra);
    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    let events = post_sse(&server.base, "/v1/chat/completions", &sreq).await;
    let runs: Vec<&serde_json::Value> = events
        .iter()
        .filter(|c| c["choices"][0]["logprobs"]["content"].is_array())
        .collect();
    // 10 tokens in runs of 4: 4 + 4 + 2.
    let sizes: Vec<usize> = runs
        .iter()
        .map(|c| {
            c["choices"][0]["logprobs"]["content"]
                .as_array()
                .unwrap()
                .len()
        })
        .collect();
    assert_eq!(sizes, vec![4, 4, 2]);
    let text: String = runs
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    let (_, whole) = post(&server.base, "/v1/chat/completions", &req).await;
    assert_eq!(
        whole["choices"][0]["message"]["content"].as_str(),
        Some(text.as_str())
    );
}
