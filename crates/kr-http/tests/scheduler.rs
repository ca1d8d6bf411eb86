//! Scheduler policies through the server: with the default policies an idle server starts
//! a request at once (counted as a fast-path execution) and GET /v1/scheduler/stats reports
//! every field; `X-Priority` reaches the engine (and a bad value is a 400 naming it);
//! PATCH /admin/config changes the window live.

mod common;

use common::{engine, get, metric, smollm2, spawn, MODEL};
use kr_http::ServerConfig;
use serde_json::{json, Value};

fn chat() -> Value {
    json!({"model": MODEL, "max_tokens": 3, "temperature": 0,
           "messages": [{"role": "user", "content": "Hi"}]})
}

async fn stats(base: &str) -> Value {
    let (status, body) = get(base, "/v1/scheduler/stats").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("json")
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_server_starts_at_once_and_reports_scheduler_stats() {
    let Some(_) = smollm2() else { return };
    let server = spawn(engine(|_| {}), ServerConfig::default());
    let base = &server.base;
    let before = stats(base).await;
    assert_eq!(before["fast_path"]["executions"], 0);
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat())
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 200);
    let s = stats(base).await;
    assert_eq!(s["fast_path"]["enabled"], true);
    assert_eq!(s["fast_path"]["executions"], 1, "{s:#}");
    assert_eq!(s["fast_path"]["requests_started"], 1);
    assert_eq!(s["fast_path"]["rate"], 1.0);
    assert_eq!(s["window"]["mode"], "off");
    assert_eq!(s["window"]["current_ms"], 0.0);
    assert_eq!(s["window"]["holds"], 0);
    for l in ["low", "medium", "high"] {
        assert_eq!(s["window"]["transitions"][l], 0);
    }
    assert!(s["steps"].as_u64().expect("steps") >= 3);
    assert_eq!(s["batch_size"]["steps"], s["steps"]);
    assert_eq!(
        s["batch_size"]["mean"], 1.0,
        "one request: one sequence a step"
    );
    let p = &s["step_time_ms"];
    assert!(p["samples"].as_u64().expect("samples") >= 3);
    let (p50, p90, p99) = (
        p["p50_ms"].as_f64(),
        p["p90_ms"].as_f64(),
        p["p99_ms"].as_f64(),
    );
    assert!(p50 > Some(0.0) && p50 <= p90 && p90 <= p99, "{p}");
    // The queue gauges are published after each step, right after its tokens go out.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while stats(base).await["queue"]["running"] != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "running never back to 0"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        stats(base).await["queue"],
        json!({"waiting": 0, "running": 0})
    );
    assert_eq!(s["preemptions"], 0);
    assert_eq!(s["latency_controller"]["enabled"], false);
    assert_eq!(s["latency_controller"]["max_batch"], 64);
    assert_eq!(s["requests_by_priority"]["normal"], 1);
    let (_, page) = get(base, "/metrics").await;
    assert_eq!(metric(&page, "kr_fast_path_total"), Some(1.0));
    assert_eq!(metric(&page, "kr_scheduler_max_batch"), Some(64.0));
    assert_eq!(metric(&page, "kr_scheduler_window_seconds"), Some(0.0));
    assert!(page.contains("kr_scheduler_window_transitions_total{window=\"high\"} 0\n"));
    assert!(page.contains("kr_batch_size_bucket{le=\"1\"}"));
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_priority_reaches_the_engine_and_a_bad_one_is_named() {
    let Some(_) = smollm2() else { return };
    let server = spawn(engine(|_| {}), ServerConfig::default());
    let c = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", server.base);
    let r = c
        .post(&url)
        .header("X-Priority", "urgent")
        .json(&chat())
        .send()
        .await;
    assert_eq!(r.expect("request").status().as_u16(), 200);
    let ollama = json!({"model": MODEL, "prompt": "Hi", "stream": false,
                        "options": {"num_predict": 2}});
    let r = c
        .post(format!("{}/api/generate", server.base))
        .header("X-Priority", "low")
        .json(&ollama)
        .send()
        .await;
    assert_eq!(r.expect("request").status().as_u16(), 200);
    let s = stats(&server.base).await;
    let by = &s["requests_by_priority"];
    assert_eq!(
        (&by["urgent"], &by["low"], &by["normal"]),
        (&json!(1), &json!(1), &json!(0))
    );
    let r = c
        .post(&url)
        .header("X-Priority", "asap")
        .json(&chat())
        .send()
        .await;
    let r = r.expect("request");
    assert_eq!(r.status().as_u16(), 400);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["param"], "X-Priority");
    assert!(body["error"]["message"]
        .as_str()
        .expect("message")
        .contains("urgent"));
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_changes_the_scheduler_policies_live() {
    let Some(_) = smollm2() else { return };
    let server = spawn(engine(|_| {}), ServerConfig::default());
    let c = reqwest::Client::new();
    let r = c
        .patch(format!("{}/admin/config", server.base))
        .json(&json!({"scheduler_window_ms": 2.5, "auto_tune": true, "auto_tune_max_batch": 4}))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let s = stats(&server.base).await;
        if s["window"]["current_ms"] == 2.5 && s["latency_controller"]["max_batch"] == 4 {
            assert_eq!(s["window"]["mode"], "fixed");
            assert_eq!(s["latency_controller"]["enabled"], true);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "policy not applied: {s:#}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let r = c
        .patch(format!("{}/admin/config", server.base))
        .json(&json!({"scheduler_window_ms": 7}))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 400, "out of range");
}
