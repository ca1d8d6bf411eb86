//! SmolLM2 GGUFs with another chat template, served under tight sandbox limits: what the
//! template-sandbox tests share.

use super::*;
use kr_engine::TemplateLimits;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const MEMORY_BUDGET: usize = 64 << 20;
pub const TIMEOUT: Duration = Duration::from_millis(1500);

/// A copy of the GGUF at `src` whose chat template is `template`. The metadata grows by a
/// multiple of 256 bytes (padding in a Jinja comment), so the tensor data stays aligned.
pub fn with_template(src: &Path, template: &str, name: &str) -> PathBuf {
    let bytes = std::fs::read(src).expect("read the GGUF");
    let key = b"tokenizer.chat_template";
    let at = bytes
        .windows(key.len())
        .position(|w| w == key)
        .expect("the GGUF has a chat template");
    let len_at = at + key.len() + 4; // after the key: u32 type (string), u64 length
    let old_len = u64::from_le_bytes(bytes[len_at..len_at + 8].try_into().unwrap()) as usize;
    let mut t = format!("{template}{{#");
    while (t.len() + 2) % 256 != old_len % 256 {
        t.push(' ');
    }
    t.push_str("#}");
    let mut out = bytes[..len_at].to_vec();
    out.extend_from_slice(&(t.len() as u64).to_le_bytes());
    out.extend_from_slice(t.as_bytes());
    out.extend_from_slice(&bytes[len_at + 8 + old_len..]);
    let path = std::env::temp_dir().join(format!("{}.gguf", model_name(name)));
    std::fs::write(&path, out).expect("write the GGUF");
    path
}

/// The name the server gives the GGUF of test `name`.
pub fn model_name(name: &str) -> String {
    format!("kr-template-{}-{name}", std::process::id())
}

/// A server over SmolLM2 with `template`, under tight sandbox limits; the GGUF's path.
pub fn server_with(template: &str, name: &str) -> (Server, PathBuf) {
    let gguf = with_template(&smollm2_path(), template, name);
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
