//! Several models in one server (issue 21, must-show 1): three models configured, a memory
//! budget for two. Requests alternate between them; the least recently used idle model is
//! unloaded to make room and loaded again when asked for; a model with a request in flight
//! is never the one unloaded; `/api/ps` and `/metrics` agree at every step; `keep_alive: 0`
//! unloads after the request; an unknown model is a 404 naming it.
//!
//! The three are the built-in stories260K under three names (a 1 MiB model: loads take
//! milliseconds), each with a 4 MiB KV cache, so each counts 4 MiB against a 10 MiB budget.

mod common;
use common::*;
use futures_util::StreamExt;
use kr_engine::{EngineConfig, KeepAlive, ModelPool, ModelSpec, BUILTIN_MODEL};
use kr_http::ServerConfig;
use serde_json::{json, Value};
use std::collections::BTreeMap;

const NAMES: [&str; 3] = ["alpha", "beta", "gamma"];

fn pool() -> ModelPool {
    let specs: Vec<ModelSpec> = NAMES
        .iter()
        .map(|n| {
            let mut cfg = EngineConfig::new(BUILTIN_MODEL);
            cfg.kv_cache_mib = 4;
            ModelSpec::new(*n, cfg)
        })
        .collect();
    let each = specs[0].estimated_bytes();
    assert_eq!(each, 4 << 20);
    ModelPool::new(specs, 2 * each + (2 << 20), KeepAlive::Forever).expect("a pool")
}

async fn generate(base: &str, model: &str) -> Value {
    let body = json!({"model": model, "prompt": "Once upon a time", "stream": false,
        "options": {"num_predict": 8, "temperature": 0}});
    let (status, v) = post(base, "/api/generate", &body).await;
    assert_eq!(status, 200, "{model}: {v}");
    v
}

/// The loaded models by `/api/ps` (name → size) and by `/metrics` (the same, from
/// `kr_model_loaded` and `kr_model_memory_bytes`), checked equal.
async fn loaded(base: &str) -> Vec<String> {
    let (_, ps) = get(base, "/api/ps").await;
    let ps: Value = serde_json::from_str(&ps).expect("JSON");
    let by_ps: BTreeMap<String, u64> = ps["models"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_string(),
                m["size"].as_u64().unwrap(),
            )
        })
        .collect();
    let page = get(base, "/metrics").await.1;
    let series = |name: &str, model: &str| {
        metric(&page, &format!("{name}{{model=\"{model}\"}}")).unwrap_or(-1.0)
    };
    let names: Vec<&str> = page
        .lines()
        .filter_map(|l| l.strip_prefix("kr_model_loaded{model=\""))
        .filter_map(|l| l.split('"').next())
        .collect();
    let by_metrics: BTreeMap<String, u64> = names
        .iter()
        .filter(|n| series("kr_model_loaded", n) == 1.0)
        .map(|n| (n.to_string(), series("kr_model_memory_bytes", n) as u64))
        .collect();
    assert_eq!(by_ps, by_metrics, "/api/ps and /metrics disagree:\n{page}");
    by_ps.into_keys().collect()
}

fn counter(page: &str, name: &str) -> f64 {
    metric(page, name).unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_models_in_a_budget_for_two() {
    let server = spawn_models(pool(), ServerConfig::default());
    let base = server.base.as_str();
    assert!(loaded(base).await.is_empty());
    let (_, tags) = get(base, "/api/tags").await;
    for n in NAMES {
        assert!(tags.contains(n), "{tags}");
    }

    generate(base, "alpha").await;
    generate(base, "beta").await;
    assert_eq!(loaded(base).await, ["alpha", "beta"]);
    // Engine series per model: only the models that ran count tokens.
    let page = get(base, "/metrics").await.1;
    let tokens = |m: &str| {
        metric(
            &page,
            &format!("kr_model_generation_tokens_total{{model=\"{m}\"}}"),
        )
    };
    assert!(
        tokens("alpha") >= Some(1.0) && tokens("beta") >= Some(1.0),
        "{page}"
    );
    assert_eq!(tokens("gamma"), None);
    // A third: the least recently used (alpha) goes.
    generate(base, "gamma").await;
    assert_eq!(loaded(base).await, ["beta", "gamma"]);
    // Alpha again: now beta is the least recently used.
    let again = generate(base, "alpha").await;
    assert_eq!(loaded(base).await, ["alpha", "gamma"]);
    assert_eq!(again["response"], generate(base, "alpha").await["response"]);
    let page = get(base, "/metrics").await.1;
    assert_eq!(counter(&page, "kr_model_loads_total"), 4.0);
    assert_eq!(counter(&page, "kr_model_evictions_total"), 2.0);

    // Gamma is the least recently used, but a request holds it: alpha goes instead.
    let body = json!({"model": "gamma", "prompt": "Once", "stream": true,
        "options": {"num_predict": 400, "temperature": 0}});
    let held = client()
        .post(format!("{base}/api/generate"))
        .json(&body)
        .send()
        .await
        .expect("request");
    let mut held = held.bytes_stream();
    held.next().await.expect("a first chunk").expect("bytes");
    let page = get(base, "/metrics").await.1;
    assert_eq!(
        metric(&page, "kr_model_requests_active{model=\"gamma\"}"),
        Some(1.0)
    );
    generate(base, "beta").await;
    assert_eq!(loaded(base).await, ["beta", "gamma"]);
    drop(held);

    // keep_alive 0: unloaded as soon as its request ends; an unknown model is named.
    let body = json!({"model": "beta", "prompt": "Once", "stream": false, "keep_alive": 0,
        "options": {"num_predict": 2}});
    assert_eq!(post(base, "/api/generate", &body).await.0, 200);
    assert_eq!(loaded(base).await, ["gamma"]);
    let (status, v) = post(
        base,
        "/api/generate",
        &json!({"model": "delta", "prompt": "x"}),
    )
    .await;
    assert_eq!(status, 404);
    let message = v["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("delta") && message.contains("alpha"),
        "{message}"
    );
    server.join().expect("server stops");
}

/// A model larger than the whole budget is a 400 naming it; the admin routes load and
/// unload (409 while a model serves a request).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn too_large_and_admin_load_unload() {
    let mut cfg = EngineConfig::new(BUILTIN_MODEL);
    cfg.kv_cache_mib = 64;
    let big = ModelSpec::new("big", cfg);
    let small = ModelSpec::new("small", EngineConfig::new(BUILTIN_MODEL));
    let pool = ModelPool::new(vec![small, big], 32 << 30, KeepAlive::Forever).expect("pool");
    let budget_small = ModelPool::new(
        vec![ModelSpec::new("big", {
            let mut c = EngineConfig::new(BUILTIN_MODEL);
            c.kv_cache_mib = 64;
            c
        })],
        8 << 20,
        KeepAlive::Forever,
    )
    .expect("pool");
    let server = spawn_models(budget_small, ServerConfig::default());
    let (status, v) = post(
        &server.base,
        "/api/generate",
        &json!({"model": "big", "prompt": "x"}),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap_or_default().contains("big"),
        "{v}"
    );
    server.join().expect("server stops");

    let server = spawn_models(pool, ServerConfig::default());
    let base = server.base.as_str();
    let url = |p: &str| format!("{base}/admin/models/{p}");
    let r = client().post(url("small/load")).send().await.expect("load");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(loaded(base).await, ["small"]);
    let r = client()
        .post(url("small/unload"))
        .send()
        .await
        .expect("unload");
    assert_eq!(r.status().as_u16(), 200);
    assert!(loaded(base).await.is_empty());
    let r = client().post(url("nope/load")).send().await.expect("load");
    assert_eq!(r.status().as_u16(), 404);
    server.join().expect("server stops");
}

/// A model's sampling defaults fill the values a request leaves out (OpenAI and Ollama).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_models_sampling_defaults_apply_to_requests_that_leave_them_out() {
    let mut spec = ModelSpec::new("greedy", EngineConfig::new(BUILTIN_MODEL));
    spec.sampling.temperature = Some(0.0);
    let pool = ModelPool::new(vec![spec], 1 << 40, KeepAlive::Forever).expect("pool");
    let server = spawn_models(pool, ServerConfig::default());
    let base = server.base.as_str();
    let body = |t: Option<f64>| {
        let mut b = json!({"model": "greedy", "prompt": "Once upon a time", "max_tokens": 30});
        if let Some(t) = t {
            b["temperature"] = json!(t);
        }
        b
    };
    let greedy = post(base, "/v1/completions", &body(Some(0.0))).await.1;
    let want = greedy["choices"][0]["text"].clone();
    for _ in 0..3 {
        let v = post(base, "/v1/completions", &body(None)).await.1;
        assert_eq!(v["choices"][0]["text"], want, "{v}");
    }
    let ollama = json!({"model": "greedy", "prompt": "Once upon a time", "raw": true,
        "stream": false, "options": {"num_predict": 30, "repeat_penalty": 1.0}});
    let v = post(base, "/api/generate", &ollama).await.1;
    assert_eq!(v["response"], want, "{v}");
    server.join().expect("server stops");
}
