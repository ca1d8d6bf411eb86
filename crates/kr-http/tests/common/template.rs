//! SmolLM2 GGUFs with another chat template, served under tight sandbox limits: what the
//! template-sandbox tests share.

use super::*;
use kr_engine::TemplateLimits;
use serde_json::json;
use std::path::PathBuf;

#[path = "../../../../tests/support/gguf_template.rs"]
mod gguf_template;
use std::time::{Duration, Instant};

pub const MEMORY_BUDGET: usize = 64 << 20;
pub const TIMEOUT: Duration = Duration::from_millis(1500);

/// A copy of the SmolLM2 GGUF whose chat template is `template`, named for test `name`.
pub fn with_template(template: &str, name: &str) -> PathBuf {
    let out = std::env::temp_dir().join(format!("{}.gguf", model_name(name)));
    gguf_template::with_template(&smollm2_path(), template, &out)
}

/// The name the server gives the GGUF of test `name`.
pub fn model_name(name: &str) -> String {
    format!("kr-template-{}-{name}", std::process::id())
}

/// A server over SmolLM2 with `template`, under tight sandbox limits; the GGUF's path.
pub fn server_with(template: &str, name: &str) -> (Server, PathBuf) {
    let gguf = with_template(template, name);
    let mut cfg = kr_engine::EngineConfig::new(&gguf);
    cfg.kv_cache_mib = 64;
    cfg.template_limits = TemplateLimits {
        max_memory_bytes: MEMORY_BUDGET,
        timeout: TIMEOUT,
        ..TemplateLimits::default()
    };
    let engine = kr_engine::start(cfg).expect("engine starts");
    (spawn(engine, kr_http::ServerConfig::default()), gguf)
}

/// Posts a chat request; returns the status, the error message and the time it took.
pub async fn chat(base: &str, model: &str, content: &str) -> (u16, String, Duration) {
    let t0 = Instant::now();
    let body = json!({"model": model, "messages": [{"role": "user", "content": content}],
                      "max_tokens": 2});
    let (status, v) = post(base, "/v1/chat/completions", &body).await;
    let msg = v["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (status, msg, t0.elapsed())
}

/// Asserts that a raw completion still works (the server goes on serving).
pub async fn still_serving(base: &str, model: &str) {
    let body = json!({"model": model, "prompt": "The capital of France is", "max_tokens": 2});
    let (status, v) = post(base, "/v1/completions", &body).await;
    assert_eq!(status, 200, "{v}");
}

/// Serves `template`, sends a chat with `content`: a 400 naming the model and containing
/// `limit_words`, within the time limit; then a raw completion is still served.
pub async fn expect_limit(template: &str, name: &str, content: &str, limit_words: &str) -> String {
    let (server, gguf) = server_with(template, name);
    let model = model_name(name);
    let (status, msg, took) = chat(&server.base, &model, content).await;
    assert_eq!(status, 400, "{msg}");
    assert!(msg.contains(&format!("model `{model}`")), "{msg}");
    assert!(msg.contains(limit_words), "{msg}");
    assert!(took < TIMEOUT + Duration::from_secs(1), "took {took:?}");
    still_serving(&server.base, &model).await;
    let _ = std::fs::remove_file(gguf);
    msg
}
