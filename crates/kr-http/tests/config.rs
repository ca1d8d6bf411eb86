//! /admin/config against a real server: GET shows values and sources; PATCH changes a
//! limit live (the next request sees it); an invalid PATCH changes nothing; the admin key
//! guards /admin (401), and API keys without an admin key disable it (403).

mod common;

use common::{engine, smollm2, spawn, MODEL};
use kr_http::ServerConfig;
use serde_json::{json, Value};

fn chat(max_tokens: u32) -> Value {
    json!({"model": MODEL, "max_tokens": max_tokens,
           "messages": [{"role": "user", "content": "Hi"}]})
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_changes_a_limit_live_and_an_invalid_patch_changes_nothing() {
    let Some(_) = smollm2() else { return };
    let server = spawn(engine(|_| {}), ServerConfig::default());
    let c = reqwest::Client::new();
    let cfg_url = format!("{}/admin/config", server.base);
    let chat_url = format!("{}/v1/chat/completions", server.base);
    let got: Value = c.get(&cfg_url).send().await.unwrap().json().await.unwrap();
    assert_eq!(got["config"]["max_tokens_cap"], 4096);
    assert_eq!(got["sources"]["max_tokens_cap"], "default");
    let r = c.post(&chat_url).json(&chat(3)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);

    let r = c
        .patch(&cfg_url)
        .json(&json!({"max_tokens_cap": 2, "strict": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = c.post(&chat_url).json(&chat(3)).send().await.unwrap();
    assert_eq!(
        r.status().as_u16(),
        400,
        "the new cap applies to the next request"
    );

    for (bad, key) in [
        (json!({"max_tokens_cap": 50, "max_queue": -1}), "max_queue"),
        (json!({"max_tokens_cap": 50, "port": 1}), "port"),
        (json!({"max_tokens_cap": 50, "nope": 1}), "nope"),
    ] {
        let r = c.patch(&cfg_url).json(&bad).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 400);
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["param"], key, "{e}");
    }
    let got: Value = c.get(&cfg_url).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        got["config"]["max_tokens_cap"], 2,
        "a rejected PATCH changes nothing"
    );
    assert_eq!(got["sources"]["max_tokens_cap"], "admin");
    assert_eq!(got["config"]["strict"], true);
    server.join().unwrap();
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_key_guards_admin_routes() {
    let Some(_) = smollm2() else { return };
    let cfg = ServerConfig {
        api_keys: vec!["user".into()],
        admin_key: Some("boss".into()),
        ..ServerConfig::default()
    };
    let server = spawn(engine(|_| {}), cfg);
    let c = reqwest::Client::new();
    let url = format!("{}/admin/config", server.base);
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"]["message"].is_string());
    let r = c.get(&url).bearer_auth("user").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401, "an API key is not the admin key");
    let r = c.get(&url).bearer_auth("boss").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    server.join().unwrap();

    let cfg = ServerConfig {
        api_keys: vec!["user".into()],
        ..ServerConfig::default()
    };
    let server = spawn(engine(|_| {}), cfg);
    let r = c
        .get(format!("{}/admin/config", server.base))
        .bearer_auth("user")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        403,
        "API keys but no admin key: /admin is disabled"
    );
    server.join().unwrap();
}

/// SIGHUP re-resolves the inputs captured at start: the `KR_SERVE_*` values read then
/// (a process's environment cannot change from outside after it starts) and the flags
/// still win over a changed file, so flag > env > file holds after a reload.
#[test]
fn reload_keeps_flag_over_env_over_file() {
    use kr_http::config::{resolve, Inputs, Source};
    let path = std::env::temp_dir().join(format!("kr-cfg-reload-{}.yaml", std::process::id()));
    let write = |text: &str| std::fs::write(&path, text).expect("write config file");
    write("max_queue: 5\nmax_tokens_cap: 50\nstream_interval: 3\n");
    let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
    let inputs = Inputs {
        flags: vec![kv("max_tokens_cap", "70")],
        env: vec![kv("max_queue", "7"), kv("max_tokens_cap", "60")],
        file: Some(path.clone()),
    };
    let start = resolve(&inputs).expect("valid");
    write("max_queue: 9\nmax_tokens_cap: 90\nstream_interval: 4\n");
    let (next, ignored) = start.reload(&inputs).expect("valid");
    let _ = std::fs::remove_file(&path);
    assert!(ignored.is_empty(), "{ignored:?}");
    assert_eq!(next.config.max_tokens_cap, 70);
    assert_eq!(next.sources["max_tokens_cap"], Source::Flag);
    assert_eq!(next.config.max_queue, 7);
    assert_eq!(next.sources["max_queue"], Source::Env);
    assert_eq!(next.config.stream_interval, 4);
    assert_eq!(next.sources["stream_interval"], Source::File);
}
