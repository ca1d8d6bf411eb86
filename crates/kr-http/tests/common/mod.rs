//! Shared helpers of the server's black-box tests: a real SmolLM2 engine, a server on
//! 127.0.0.1:0 running on its own thread and runtime, and small HTTP helpers.
#![allow(dead_code)]

pub mod template;
#[path = "../../../../tests/support/test_models.rs"]
pub mod test_models;

use kr_engine::{EngineConfig, EngineHandle};
use kr_http::ServerConfig;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1";

/// The SmolLM2 GGUF, or `None` (and a `skipped: …` line) without the test models:
/// `let Some(_) = smollm2() else { return };` starts every test that needs it.
pub fn smollm2() -> Option<PathBuf> {
    test_models::path(test_models::SMOLLM2)
}

/// The SmolLM2 GGUF's path, unchecked (after [`smollm2`]).
pub fn smollm2_path() -> PathBuf {
    test_models::file(test_models::SMOLLM2)
}

pub fn engine(f: impl FnOnce(&mut EngineConfig)) -> EngineHandle {
    let mut cfg = EngineConfig::new(smollm2_path());
    cfg.kv_cache_mib = 128;
    f(&mut cfg);
    kr_engine::start(cfg).expect("engine starts")
}

/// A server running on its own thread; `shutdown` stops it gracefully.
pub struct Server {
    pub base: String,
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

pub fn spawn(engine: EngineHandle, cfg: ServerConfig) -> Server {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    spawn_on(listener, engine, cfg)
}

/// A server for the models of `pool` (loaded on first use).
pub fn spawn_models(pool: kr_engine::ModelPool, cfg: ServerConfig) -> Server {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    spawn_with(listener, cfg, move |l, cfg, stop| {
        Box::pin(kr_http::serve_models(l, pool, cfg, stop))
    })
}

/// [`spawn`] on a listener the test made (e.g. with small socket buffers).
pub fn spawn_on(
    listener: std::net::TcpListener,
    engine: EngineHandle,
    cfg: ServerConfig,
) -> Server {
    spawn_with(listener, cfg, move |l, cfg, stop| {
        Box::pin(kr_http::serve(l, engine, cfg, stop))
    })
}

type Serving = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>>;
type Stop = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Runs `serve` on its own thread and runtime, over `listener`, until shutdown.
fn spawn_with(
    listener: std::net::TcpListener,
    cfg: ServerConfig,
    serve: impl FnOnce(tokio::net::TcpListener, ServerConfig, Stop) -> Serving + Send + 'static,
) -> Server {
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener)?;
            let stop: Stop = Box::pin(async {
                let _ = rx.await;
            });
            serve(l, cfg, stop).await
        })
    });
    Server {
        base: format!("http://{addr}"),
        addr,
        stop: Some(tx),
        thread: Some(thread),
    }
}

impl Server {
    /// Signals shutdown without waiting.
    pub fn signal_shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Waits for the server to finish after `signal_shutdown`.
    pub fn join(mut self) -> std::io::Result<()> {
        self.signal_shutdown();
        self.thread
            .take()
            .expect("thread")
            .join()
            .expect("server thread")
    }
}

/// One server per test binary, default settings, shared by its tests.
pub fn shared() -> &'static str {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| {
        let s = spawn(engine(|_| {}), ServerConfig::default());
        let base = s.base.clone();
        std::mem::forget(s);
        base
    })
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client")
}

pub async fn post(base: &str, path: &str, body: &Value) -> (u16, Value) {
    let r = client()
        .post(format!("{base}{path}"))
        .json(body)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.expect("json body"))
}

pub async fn get(base: &str, path: &str) -> (u16, String) {
    let r = client()
        .get(format!("{base}{path}"))
        .send()
        .await
        .expect("request");
    (r.status().as_u16(), r.text().await.expect("text"))
}

/// The `data:` payloads of an SSE response body, `[DONE]` included as a string.
pub fn sse_events(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap_or_else(|_| Value::String(d.to_string())))
        .collect()
}

pub async fn post_sse(base: &str, path: &str, body: &Value) -> Vec<Value> {
    let r = client()
        .post(format!("{base}{path}"))
        .json(body)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 200);
    let ct = r.headers()["content-type"]
        .to_str()
        .unwrap_or("")
        .to_string();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    sse_events(&r.text().await.expect("body"))
}

pub fn chat_body(content: &str, extra: Value) -> Value {
    let mut b = json!({"model": MODEL, "messages": [{"role": "user", "content": content}]});
    if let (Some(b), Some(e)) = (b.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    b
}

/// The value of an unlabelled series in a Prometheus text page.
pub fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Polls /metrics until `pred` holds or `within` passes; returns the last page.
pub async fn wait_metrics(base: &str, within: Duration, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + within;
    loop {
        let (_, page) = get(base, "/metrics").await;
        if pred(&page) || Instant::now() > deadline {
            return page;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
