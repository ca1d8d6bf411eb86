//! Ollama API, tokenize/detokenize, probes and the metric names, against the real engine.

mod common;
use common::*;
use serde_json::{json, Value};

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test]
async fn chat_non_stream_answers_paris() {
    let Some(_) = smollm2() else { return };
    let body = json!({"model": MODEL, "stream": false, "options": {"temperature": 0, "num_predict": 20},
        "messages": [{"role": "user", "content": "What is the capital of France?"}]});
    let (s, v) = post(shared(), "/api/chat", &body).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["message"]["content"], "The capital of France is Paris.");
    assert_eq!(v["message"]["role"], "assistant");
    assert_eq!(v["done"], true);
    assert_eq!(v["done_reason"], "stop");
    assert!(v["eval_count"].as_u64().unwrap() > 0);
    assert!(v["created_at"].as_str().unwrap().ends_with('Z'));
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test]
async fn generate_streams_ndjson_equal_to_the_whole() {
    let Some(_) = smollm2() else { return };
    let body = json!({"model": format!("{MODEL}:latest"), "prompt": "Name three colours.",
        "options": {"temperature": 0, "num_predict": 24}});
    let r = client()
        .post(format!("{}/api/generate", shared()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("ndjson"));
    let text = r.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let last = lines.last().unwrap();
    assert_eq!(last["done"], true);
    assert!(lines[..lines.len() - 1].iter().all(|l| l["done"] == false));
    let streamed: String = lines
        .iter()
        .filter_map(|l| l["response"].as_str())
        .collect();
    let mut whole = body.clone();
    whole["stream"] = json!(false);
    let (_, v) = post(shared(), "/api/generate", &whole).await;
    assert_eq!(v["response"].as_str().unwrap(), streamed);
    assert_eq!(v["eval_count"], last["eval_count"]);
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test]
async fn model_listing_endpoints() {
    let Some(_) = smollm2() else { return };
    let (s, tags) = get(shared(), "/api/tags").await;
    assert_eq!(s, 200);
    let tags: Value = serde_json::from_str(&tags).unwrap();
    assert_eq!(tags["models"][0]["name"], MODEL);
    assert!(tags["models"][0]["size"].as_u64().unwrap() > 1_000_000);
    let (s, ps) = get(shared(), "/api/ps").await;
    assert_eq!(s, 200);
    assert!(ps.contains(MODEL));
    let (s, v) = get(shared(), "/api/version").await;
    assert_eq!(s, 200);
    assert!(v.contains("version"));
    let (s, show) = post(shared(), "/api/show", &json!({"model": MODEL})).await;
    assert_eq!(s, 200);
    assert_eq!(show["model_info"]["general.architecture"], "llama");
    let (s, err) = post(shared(), "/api/show", &json!({"model": "nope"})).await;
    assert_eq!(s, 404);
    assert!(err["error"].as_str().unwrap().contains("nope"));
    let (s, err) = post(
        shared(),
        "/api/chat",
        &json!({"model": MODEL, "messages": "x"}),
    )
    .await;
    assert_eq!(s, 400);
    assert!(err["error"].as_str().unwrap().contains("messages"));
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test]
async fn tokenize_roundtrip() {
    let Some(_) = smollm2() else { return };
    let (s, v) = post(shared(), "/tokenize", &json!({"prompt": "Hello world"})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["count"].as_u64().unwrap(),
        v["tokens"].as_array().unwrap().len() as u64
    );
    let (s, d) = post(shared(), "/detokenize", &json!({"tokens": v["tokens"]})).await;
    assert_eq!(s, 200);
    assert_eq!(d["prompt"], "Hello world");
    let (s, e) = post(shared(), "/detokenize", &json!({"tokens": [99999999]})).await;
    assert_eq!(s, 400);
    assert_eq!(e["error"]["param"], "tokens");
    let msgs = json!({"messages": [{"role": "user", "content": "Hi"}]});
    let (s, v) = post(shared(), "/tokenize", &msgs).await;
    assert_eq!(s, 200);
    assert!(v["count"].as_u64().unwrap() > 3);
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test]
async fn probes_and_metric_names() {
    let Some(_) = smollm2() else { return };
    assert_eq!(get(shared(), "/health").await.0, 200);
    assert_eq!(get(shared(), "/ready").await.0, 200);
    let (s, body) = get(shared(), "/nope").await;
    assert_eq!(s, 404);
    assert!(body.contains("\"error\""));
    // One request so the histograms have data.
    let body = chat_body("Hi", json!({"max_tokens": 3}));
    assert_eq!(post(shared(), "/v1/chat/completions", &body).await.0, 200);
    let (s, page) = get(shared(), "/metrics").await;
    assert_eq!(s, 200);
    for name in [
        "kr_requests_total{outcome=\"stop\"}",
        "kr_requests_running",
        "kr_requests_waiting",
        "kr_kv_blocks_used",
        "kr_kv_blocks_total",
        "kr_prompt_tokens_total",
        "kr_generation_tokens_total",
        "kr_time_to_first_token_seconds_bucket",
        "kr_inter_token_latency_seconds_bucket",
        "kr_e2e_request_latency_seconds_count",
        "kr_queue_time_seconds_count",
        "kr_step_duration_seconds_count",
        "kr_preemptions_total",
        "kr_prefix_cache_queries_total",
        "kr_prefix_cache_hits_total",
        "kr_fast_path_total",
    ] {
        assert!(page.contains(name), "missing {name}");
    }
    assert!(metric(&page, "kr_kv_blocks_total").unwrap() > 0.0);
    assert!(metric(&page, "kr_e2e_request_latency_seconds_count").unwrap() >= 1.0);
    assert!(metric(&page, "kr_step_duration_seconds_count").unwrap() >= 1.0);
}
