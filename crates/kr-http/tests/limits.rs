//! Limits and bad input: every bad request is a 4xx JSON naming the problem while a stream
//! runs and finishes intact; overload gives 429 + Retry-After and every accepted request
//! completes; the per-request time limit; strict mode and the API key.

mod common;
use common::*;
use kr_http::ServerConfig;
use serde_json::{json, Value};

/// (body, expected status, expected `param` if any)
fn bad_cases() -> Vec<(Vec<u8>, u16, Option<&'static str>)> {
    let chat = |extra: Value| serde_json::to_vec(&chat_body("Hi", extra)).unwrap();
    let long_prompt = "hello ".repeat(9000);
    vec![
        (b"{\"model\": ".to_vec(), 400, None),
        (b"[1, 2]".to_vec(), 400, None),
        (
            b"{\"model\": \"x\", \"messages\": [{\"role\": \"user\", \"content\": \"\xff\xfe\"}]}"
                .to_vec(),
            400,
            None,
        ),
        (
            chat(json!({"temperature": "hot"})),
            400,
            Some("temperature"),
        ),
        (chat(json!({"temperature": 5})), 400, Some("temperature")),
        (chat(json!({"top_p": 0})), 400, Some("top_p")),
        (chat(json!({"n": 0})), 400, Some("n")),
        (
            chat(json!({"max_tokens": 1_000_000})),
            400,
            Some("max_tokens"),
        ),
        (chat(json!({"max_tokens": -1})), 400, Some("max_tokens")),
        // More than the 128 MiB test KV pool holds (about 2,900 tokens).
        (chat(json!({"max_tokens": 4000})), 400, Some("max_tokens")),
        (chat(json!({"stop": 7})), 400, Some("stop")),
        (
            chat(json!({"logprobs": true, "top_logprobs": 50})),
            400,
            Some("top_logprobs"),
        ),
        (chat(json!({"seed": "abc"})), 400, Some("seed")),
        (chat(json!({"model": "no-such-model"})), 404, Some("model")),
        (chat(json!({"messages": []})), 400, Some("messages")),
        (chat(json!({"messages": "hi"})), 400, Some("messages")),
        (
            chat(json!({"messages": [{"role": "wizard", "content": "x"}]})),
            400,
            Some("messages[0].role"),
        ),
        (
            serde_json::to_vec(&chat_body(&long_prompt, json!({}))).unwrap(),
            400,
            Some("messages"),
        ),
        (vec![b' '; 300 * 1024], 413, None),
    ]
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test]
async fn bad_input_is_a_4xx_json_and_a_running_stream_finishes_intact() {
    let Some(_) = smollm2() else { return };
    let cfg = ServerConfig {
        max_body_bytes: 256 * 1024,
        ..ServerConfig::default()
    };
    let server = spawn(engine(|_| {}), cfg);
    let base = server.base.clone();
    let req = chat_body(
        "Count to fifty.",
        json!({"temperature": 0, "max_tokens": 48, "ignore_eos": true}),
    );
    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    let b2 = base.clone();
    let stream = tokio::spawn(async move { post_sse(&b2, "/v1/chat/completions", &sreq).await });
    for (body, status, param) in bad_cases() {
        let r = client()
            .post(format!("{base}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request");
        let got = r.status().as_u16();
        let v: Value = r.json().await.expect("a JSON error body");
        assert_eq!(got, status, "{v}");
        assert!(
            !v["error"]["message"].as_str().unwrap_or("").is_empty(),
            "{v}"
        );
        if let Some(p) = param {
            assert_eq!(v["error"]["param"], p, "{v}");
        }
    }
    let events = stream.await.expect("stream task");
    assert_eq!(events.last(), Some(&json!("[DONE]")));
    let text: String = events
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    let finish = events
        .iter()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str());
    assert_eq!(finish, Some("length"));
    let (_, whole) = post(&base, "/v1/chat/completions", &req).await;
    assert_eq!(whole["usage"]["completion_tokens"], 48);
    assert_eq!(
        whole["choices"][0]["message"]["content"].as_str(),
        Some(text.as_str())
    );
    assert_eq!(get(&base, "/health").await.0, 200);
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test]
async fn overload_gets_429_with_retry_after_and_accepted_requests_complete() {
    let Some(_) = smollm2() else { return };
    let cfg = ServerConfig {
        max_running: 2,
        max_queue: 2,
        ..ServerConfig::default()
    };
    let server = spawn(engine(|c| c.max_num_seqs = 2), cfg);
    let base = server.base.clone();
    let body = chat_body(
        "Count to fifty.",
        json!({"max_tokens": 24, "ignore_eos": true}),
    );
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (b, body) = (base.clone(), body.clone());
            tokio::spawn(async move {
                let r = client()
                    .post(format!("{b}/v1/chat/completions"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let retry = r.headers().get("retry-after").is_some();
                (status, retry, r.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let (mut ok, mut rejected) = (0, 0);
    for t in tasks {
        let (status, retry, v) = t.await.unwrap();
        match status {
            200 => {
                ok += 1;
                assert_eq!(v["usage"]["completion_tokens"], 24);
            }
            429 => {
                rejected += 1;
                assert!(retry, "429 without Retry-After");
                assert_eq!(v["error"]["type"], "rate_limit_error");
            }
            s => panic!("unexpected status {s}: {v}"),
        }
    }
    assert!(rejected > 0 && ok >= 4, "ok {ok}, rejected {rejected}");
    assert_eq!(get(&base, "/health").await.0, 200);
    assert_eq!(post(&base, "/v1/chat/completions", &body).await.0, 200);
    let page = get(&base, "/metrics").await.1;
    assert_eq!(
        metric(&page, "kr_requests_total{outcome=\"rejected\"}"),
        Some(rejected as f64)
    );
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test]
async fn strict_mode_and_api_key() {
    let Some(_) = smollm2() else { return };
    let cfg = ServerConfig {
        strict: true,
        api_keys: vec!["other".into(), "sekrit".into()],
        ..ServerConfig::default()
    };
    let server = spawn(engine(|_| {}), cfg);
    let base = server.base.clone();
    let url = format!("{base}/v1/chat/completions");
    let body = chat_body("Hi", json!({"max_tokens": 2, "frobnicate": 1}));
    let r = client().post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "invalid_api_key"
    );
    let r = client()
        .post(&url)
        .bearer_auth("wrong")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = client()
        .post(&url)
        .bearer_auth("sekrit")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["param"],
        "frobnicate"
    );
    let body = chat_body("Hi", json!({"max_tokens": 2}));
    let r = client()
        .post(&url)
        .bearer_auth("sekrit")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(get(&base, "/health").await.0, 200);
    assert_eq!(get(&base, "/metrics").await.0, 401);
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test]
async fn requests_past_the_time_limit_end_with_504_or_an_error_event() {
    let Some(_) = smollm2() else { return };
    let cfg = ServerConfig {
        request_timeout: Some(std::time::Duration::from_millis(400)),
        ..ServerConfig::default()
    };
    let server = spawn(engine(|_| {}), cfg);
    let base = server.base.clone();
    let body = chat_body(
        "Count to fifty.",
        json!({"max_tokens": 2000, "ignore_eos": true}),
    );
    let (status, v) = post(&base, "/v1/chat/completions", &body).await;
    assert_eq!(status, 504, "{v}");
    assert_eq!(v["error"]["code"], "timeout");
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let events = post_sse(&base, "/v1/chat/completions", &sbody).await;
    assert_eq!(events.last(), Some(&json!("[DONE]")));
    assert!(
        events.iter().any(|e| e["error"]["message"].is_string()),
        "no error event"
    );
    let page = wait_metrics(&base, std::time::Duration::from_secs(5), |p| {
        metric(p, "kr_requests_running") == Some(0.0)
    })
    .await;
    assert_eq!(metric(&page, "kr_kv_blocks_used"), Some(0.0), "{page}");
    assert_eq!(get(&base, "/health").await.0, 200);
}

/// `--strict` also refuses unknown fields inside messages, tools and `response_format`, and
/// `/api/generate`'s `think` (accepted, not honoured): a 400 naming the field. A
/// `keep_alive` Ollama cannot read is a 400 naming it (strict or not).
#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test]
async fn strict_mode_names_nested_and_unhonoured_fields() {
    let Some(_) = smollm2() else { return };
    let cfg = ServerConfig {
        strict: true,
        ..ServerConfig::default()
    };
    let server = spawn(engine(|_| {}), cfg);
    let url = format!("{}/v1/chat/completions", server.base);
    let tool = json!({"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "colour": 1}});
    let cases = [
        (
            json!({"max_tokens": 2, "messages": [{"role": "user", "content": "Hi", "mood": "x"}]}),
            "messages[0].mood",
        ),
        (
            json!({"max_tokens": 2, "tools": [tool]}),
            "tools[0].function.colour",
        ),
        (
            json!({"max_tokens": 2, "response_format": {"type": "json_object", "extra": true}}),
            "response_format.extra",
        ),
    ];
    for (extra, param) in cases {
        let r = client()
            .post(&url)
            .json(&chat_body("Hi", extra))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{param}");
        assert_eq!(r.json::<Value>().await.unwrap()["error"]["param"], param);
    }
    for (field, value) in [("keep_alive", json!("5 minutes")), ("think", json!(true))] {
        let mut body = json!({"model": MODEL, "prompt": "Hi", "stream": false});
        body[field] = value;
        let url = format!("{}/api/generate", server.base);
        let r = client().post(url).json(&body).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 400, "{field}");
        assert!(r.text().await.unwrap().contains(field));
    }
    // Known nested fields pass.
    let body = chat_body(
        "Hi",
        json!({"max_tokens": 2, "response_format": {"type": "text"}}),
    );
    let r = client().post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
}
