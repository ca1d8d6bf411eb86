//! Supervision (issue 22, must-show 1), with a fault hook (kr-engine's `fault-injection`
//! feature, on only in tests) that panics every step holding the first chunk of a
//! "poisoned" prompt. The poisoned request is retried once and then gets a 500 naming the
//! cause; a healthy request sent with it completes with the text it has alone; the engine loop restarts after each panic; after 3 failed steps in a row the
//! circuit breaker opens (503 with Retry-After, /ready 503), and after its cooldown a
//! request closes it again (/ready 200). No KV block leaks.

mod common;
use common::*;
use kr_engine::{BreakerConfig, Fault, FaultHook};
use kr_http::ServerConfig;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// Token ids that start a poisoned prompt.
const POISON: [u32; 3] = [9001, 9002, 9003];
const COOLDOWN: Duration = Duration::from_millis(600);

fn completion(prompt: &[u32]) -> Value {
    json!({"model": MODEL, "prompt": prompt, "max_tokens": 12, "temperature": 0})
}

fn poisoned() -> Value {
    let mut p = POISON.to_vec();
    p.extend([504, 3575, 282]);
    completion(&p)
}

fn healthy() -> Value {
    completion(&[504, 3575, 282, 4649, 314])
}

async fn post_full(base: &str, body: &Value) -> (u16, Option<String>, Value) {
    let r = client()
        .post(format!("{base}/v1/completions"))
        .json(body)
        .send()
        .await
        .expect("request");
    let retry_after = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    (
        r.status().as_u16(),
        retry_after,
        r.json().await.expect("JSON"),
    )
}

fn text(v: &Value) -> String {
    v["choices"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_steps_fail_their_requests_restart_the_loop_and_trip_the_breaker() {
    let Some(_) = smollm2() else { return };
    let hook = FaultHook(Arc::new(|plan: &kr_core::StepPlan| {
        let hit = plan
            .seqs
            .iter()
            .any(|s| s.start == 0 && s.tokens.starts_with(&POISON));
        hit.then(|| Fault::Panic("injected fault: a poisoned prompt".into()))
    }));
    // One sequence at a time: a healthy request is never inside a poisoned step (a request
    // that is, and has streamed tokens already, ends with the error too).
    let engine = engine(|c| {
        c.max_num_seqs = 1;
        c.fault_hook = Some(hook);
        c.breaker = BreakerConfig {
            threshold: 3,
            cooldown: COOLDOWN,
        };
    });
    let server = spawn(engine, ServerConfig::default());
    let base = server.base.as_str();

    let (status, _, alone) = post_full(base, &healthy()).await;
    assert_eq!(status, 200, "{alone}");
    assert_eq!(get(base, "/ready").await.0, 200);

    // A poisoned and a healthy request at once: the first fails (after its one retry),
    // the second completes as it does alone.
    let (poison_body, healthy_body) = (poisoned(), healthy());
    let (bad, good) = tokio::join!(
        post_full(base, &poison_body),
        post_full(base, &healthy_body)
    );
    assert_eq!(bad.0, 500, "{}", bad.2);
    let message = bad.2["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("injected fault"), "{message}");
    assert_eq!(good.0, 200, "{}", good.2);
    assert_eq!(text(&good.2), text(&alone));
    let page = get(base, "/metrics").await.1;
    assert!(
        metric(&page, "kr_engine_restarts_total") >= Some(2.0),
        "{page}"
    );
    assert!(
        metric(&page, "kr_engine_retries_total") >= Some(1.0),
        "{page}"
    );

    // Poisoned requests until the breaker opens (3 failed steps in a row).
    let mut refused = None;
    for _ in 0..4 {
        let (status, retry_after, body) = post_full(base, &poisoned()).await;
        match status {
            500 => continue,
            503 => {
                refused = Some((retry_after, body));
                break;
            }
            other => panic!("status {other}: {body}"),
        }
    }
    let (retry_after, body) = refused.expect("the breaker opened");
    assert_eq!(body["error"]["code"], "circuit_open", "{body}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    let (status, retry_after, _) = post_full(base, &healthy()).await;
    assert_eq!((status, retry_after.as_deref()), (503, Some("1")));
    assert_eq!(get(base, "/ready").await.0, 503);
    let page = get(base, "/metrics").await.1;
    assert_eq!(
        metric(&page, "kr_circuit_breaker_state"),
        Some(1.0),
        "{page}"
    );

    // After the cooldown one request is let in; its steps succeed and the breaker closes.
    tokio::time::sleep(COOLDOWN + Duration::from_millis(100)).await;
    let (status, _, after) = post_full(base, &healthy()).await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(text(&after), text(&alone));
    assert_eq!(get(base, "/ready").await.0, 200);
    let page = wait_metrics(base, Duration::from_secs(5), |p| {
        metric(p, "kr_kv_blocks_used") == Some(0.0)
    })
    .await;
    assert_eq!(
        metric(&page, "kr_circuit_breaker_state"),
        Some(0.0),
        "{page}"
    );
    assert_eq!(metric(&page, "kr_kv_blocks_used"), Some(0.0), "{page}");
    server.join().expect("server stops");
}
