//! Request coalescing (issue 21, must-show 3): 8 identical concurrent greedy requests run
//! as one generation (the engine sees one prompt; `kr_coalesced_requests_total` counts the
//! 7 that joined) and each stream is complete and equal to a request run alone; a client
//! that goes away mid-stream leaves the others intact.

mod common;
use common::*;
use futures_util::StreamExt;
use kr_http::ServerConfig;
use serde_json::{json, Value};

fn body(content: &str) -> Value {
    chat_body(
        content,
        json!({"max_tokens": 48, "temperature": 0, "ignore_eos": true, "stream": true}),
    )
}

/// The text of a whole SSE stream, checked to end with a finish reason and `[DONE]`.
async fn streamed_text(base: &str, body: &Value) -> String {
    let events = post_sse(base, "/v1/chat/completions", body).await;
    assert_eq!(events.last(), Some(&Value::String("[DONE]".into())));
    let finish = events
        .iter()
        .filter_map(|e| e["choices"][0]["finish_reason"].as_str())
        .next_back();
    assert_eq!(finish, Some("length"));
    events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect()
}

async fn counter(base: &str, name: &str) -> f64 {
    metric(&get(base, "/metrics").await.1, name).unwrap_or(0.0)
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn identical_greedy_requests_share_one_generation() {
    let Some(_) = smollm2() else { return };
    let server = spawn(engine(|_| {}), ServerConfig::default());
    let base = server.base.as_str();
    let b = body("Write a short poem about the sea.");
    let alone = streamed_text(base, &b).await;
    let prompt_tokens = counter(base, "kr_prompt_tokens_total").await;

    let texts = futures_util::future::join_all((0..8).map(|_| streamed_text(base, &b))).await;
    assert!(texts.iter().all(|t| *t == alone), "{texts:?}");
    assert_eq!(counter(base, "kr_coalesced_requests_total").await, 7.0);
    // One engine request: its prompt counted once.
    let after = counter(base, "kr_prompt_tokens_total").await;
    assert_eq!(after - prompt_tokens, prompt_tokens);

    // One of eight goes away after three chunks; the other seven finish in full.
    let b = body("List three colours of the rainbow.");
    let alone = streamed_text(base, &b).await;
    let quitter = async {
        let r = client()
            .post(format!("{base}/v1/chat/completions"))
            .json(&b)
            .send()
            .await
            .expect("request");
        let mut chunks = r.bytes_stream();
        for _ in 0..3 {
            chunks.next().await;
        }
    };
    let (texts, ()) = tokio::join!(
        futures_util::future::join_all((0..7).map(|_| streamed_text(base, &b))),
        quitter
    );
    assert!(texts.iter().all(|t| *t == alone), "{texts:?}");
    assert_eq!(counter(base, "kr_coalesced_requests_total").await, 14.0);
    let page = wait_metrics(base, std::time::Duration::from_secs(5), |p| {
        metric(p, "kr_kv_blocks_used") == Some(0.0)
    })
    .await;
    assert_eq!(metric(&page, "kr_requests_running"), Some(0.0));
    server.join().expect("server stops");
}

/// Sampled requests without a seed are never coalesced.
#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unseeded_sampling_is_not_coalesced() {
    let Some(_) = smollm2() else { return };
    let server = spawn(engine(|_| {}), ServerConfig::default());
    let base = server.base.as_str();
    let mut b = body("Tell me a story.");
    b["temperature"] = json!(0.9);
    futures_util::future::join_all((0..4).map(|_| streamed_text(base, &b))).await;
    assert_eq!(counter(base, "kr_coalesced_requests_total").await, 0.0);
    server.join().expect("server stops");
}
