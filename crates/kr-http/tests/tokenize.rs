//! /tokenize coalescing: concurrent calls are answered from batch encodes, each
//! answer equal to what the engine's own tokeniser gives for that prompt alone.

mod common;
use common::*;
use kr_engine::{ChatMessage, Prompt};
use kr_http::ServerConfig;
use serde_json::{json, Value};

fn ids(v: &Value) -> Vec<u32> {
    v["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// Prompt `i` of the test: raw text or a conversation, all different, a few KB long so
/// that encoding takes long enough for calls to overlap.
fn prompt(i: usize) -> (Value, Prompt) {
    let text =
        format!("Request {i}: ") + &"The quick brown fox jumps over the lazy dog. ".repeat(40 + i);
    if i.is_multiple_of(3) {
        let body = json!({"messages": [{"role": "user", "content": text}]});
        (body, Prompt::Chat(vec![ChatMessage::new("user", &text)]))
    } else {
        (json!({"prompt": text}), Prompt::Text(text))
    }
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test]
async fn concurrent_tokenize_calls_are_coalesced_and_each_answer_is_exact() {
    let Some(_) = smollm2() else { return };
    let handle = engine(|_| {});
    let server = spawn(handle.clone(), ServerConfig::default());
    let base = server.base.clone();
    let page = |p: &str, name: &str| metric(p, name).expect(name) as u64;
    let (_, before) = get(&base, "/metrics").await;
    const N: usize = 32;
    let calls = (0..N).map(|i| {
        let base = base.clone();
        tokio::spawn(async move { post(&base, "/tokenize", &prompt(i).0).await })
    });
    let answers = futures_util::future::join_all(calls).await;
    for (i, a) in answers.into_iter().enumerate() {
        let (status, body) = a.expect("task");
        assert_eq!(status, 200, "{body}");
        let want = handle.tokenize_prompt(&prompt(i).1).expect("tokenizes");
        assert_eq!(ids(&body), want, "prompt {i}");
        assert_eq!(body["count"], json!(want.len()));
    }
    let (_, after) = get(&base, "/metrics").await;
    let requests =
        page(&after, "kr_tokenize_requests_total") - page(&before, "kr_tokenize_requests_total");
    let batches =
        page(&after, "kr_tokenize_batches_total") - page(&before, "kr_tokenize_batches_total");
    assert_eq!(requests, N as u64);
    assert!(
        batches < requests,
        "{N} concurrent calls took {batches} batches: nothing was coalesced"
    );
    println!("{N} concurrent /tokenize calls answered by {batches} batch encodes");
    // A lone call still works and is answered by a batch of one.
    let (status, body) = post(&base, "/tokenize", &json!({"prompt": "Hello world"})).await;
    assert_eq!(status, 200);
    assert_eq!(
        ids(&body),
        handle
            .tokenize_prompt(&Prompt::Text("Hello world".into()))
            .unwrap()
    );
    server.join().expect("clean shutdown");
}
