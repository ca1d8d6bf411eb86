//! Streaming: a client that stops reading never slows the engine or other
//! requests, and token coalescing by count (`stream_interval`) and by time
//! (`stream_interval_ms`).

mod common;
use common::*;
use kr_http::ServerConfig;
use serde_json::{json, Value};
use std::time::Duration;

/// The chunks of a streamed completion that carry text.
fn text_chunks(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| e["choices"].get(0)?["text"].as_str().map(str::to_string))
        .filter(|t| !t.is_empty())
        .collect()
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test]
async fn a_time_limit_flushes_runs_that_the_token_count_would_hold() {
    let Some(_) = smollm2() else { return };
    // Runs of 1000 tokens: without a time limit a short answer is one chunk at the end.
    let cfg = ServerConfig {
        stream_interval: 1000,
        ..ServerConfig::default()
    };
    let server = spawn(engine(|_| {}), cfg);
    let base = server.base.clone();
    let body = json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 24,
        "temperature": 0, "ignore_eos": true, "stream": true});
    let held = text_chunks(&post_sse(&base, "/v1/completions", &body).await);
    assert_eq!(held.len(), 1, "{held:?}");
    // With runs held at most 1 ms, a 24-token answer (each token takes a forward pass of
    // the model) arrives in several chunks, with the same text.
    let r = client()
        .patch(format!("{base}/admin/config"))
        .json(&json!({"stream_interval_ms": 1}))
        .send()
        .await
        .expect("patch");
    assert_eq!(r.status().as_u16(), 200);
    let timed = text_chunks(&post_sse(&base, "/v1/completions", &body).await);
    assert!(timed.len() > 1, "{timed:?}");
    assert_eq!(timed.concat(), held.concat());
    // Out of range: 400 naming the key.
    let r = client()
        .patch(format!("{base}/admin/config"))
        .json(&json!({"stream_interval_ms": 100000}))
        .send()
        .await
        .expect("patch");
    assert_eq!(r.status().as_u16(), 400);
    let err: Value = r.json().await.expect("json");
    assert_eq!(err["error"]["param"], json!("stream_interval_ms"));
    server.join().expect("clean shutdown");
}

/// Opens a streamed request on a socket with a tiny receive buffer and never reads it.
async fn stalled_stream(addr: std::net::SocketAddr, body: &Value) -> tokio::net::TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("rcvbuf");
    let stream = sock.connect(addr).await.expect("connect");
    let body = body.to_string();
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut rest = req.as_bytes();
    while !rest.is_empty() {
        stream.writable().await.expect("writable");
        match stream.try_write(rest) {
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => panic!("write: {e}"),
        }
    }
    stream
}

/// A listener whose accepted sockets have a tiny send buffer (Linux: they inherit it), so
/// that a response the client does not read backs up into the server quickly.
async fn small_buffer_listener() -> std::net::TcpListener {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_send_buffer_size(4096).expect("sndbuf");
    sock.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
    sock.listen(64)
        .expect("listen")
        .into_std()
        .expect("std listener")
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test]
async fn a_client_that_stops_reading_slows_neither_the_engine_nor_others() {
    let Some(_) = smollm2() else { return };
    let server = spawn_on(
        small_buffer_listener().await,
        engine(|_| {}),
        ServerConfig::default(),
    );
    let base = server.base.clone();
    let probe = json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 24,
        "temperature": 0});
    let (status, alone) = post(&base, "/v1/completions", &probe).await;
    assert_eq!(status, 200, "{alone}");
    // 192 tokens with 20 alternatives each: about 120 KB of SSE, several times what the
    // two socket buffers and hyper's write queue hold.
    const TOKENS: u64 = 192;
    let big = json!({"model": MODEL, "prompt": "Write a long story.", "max_tokens": TOKENS,
        "ignore_eos": true, "logprobs": 20, "stream": true});
    let m0 = get(&base, "/metrics").await.1;
    let generated = |m: &str| metric(m, "kr_generation_tokens_total").unwrap() as u64;
    let stalled = stalled_stream(server.addr, &big).await;
    wait_metrics(&base, Duration::from_secs(60), |m| {
        metric(m, "kr_requests_running") == Some(1.0)
    })
    .await;
    // Another client, while the stalled one's request runs: the same answer as alone.
    let (status, during) = tokio::time::timeout(
        Duration::from_secs(120),
        post(&base, "/v1/completions", &probe),
    )
    .await
    .expect("the other request completes while a client is stalled");
    assert_eq!(status, 200, "{during}");
    assert_eq!(during["choices"][0]["text"], alone["choices"][0]["text"]);
    // The engine generates every token of the stalled request although nobody reads them
    // (they wait in its event channel: at most max_tokens events), and the stream stays
    // stalled: its admission permit is still held by the unread response body.
    let done = |m: &str| {
        generated(m) >= generated(&m0) + TOKENS + 24
            && metric(m, "kr_requests_running") == Some(0.0)
    };
    let m = wait_metrics(&base, Duration::from_secs(300), done).await;
    assert!(done(&m), "the engine did not finish the stalled request");
    assert_eq!(
        metric(&m, "kr_http_requests_in_flight"),
        Some(1.0),
        "the body should still be stalled (else the test wrote too little to fill the buffers)"
    );
    // The client goes away: its response body is dropped and the permit comes back.
    drop(stalled);
    let m = wait_metrics(&base, Duration::from_secs(30), |m| {
        metric(m, "kr_http_requests_in_flight") == Some(0.0)
    })
    .await;
    assert_eq!(metric(&m, "kr_http_requests_in_flight"), Some(0.0));
    server.join().expect("clean shutdown");
}
