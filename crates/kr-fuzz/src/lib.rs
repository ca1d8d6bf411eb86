//! Fuzz targets: each takes arbitrary bytes and must never panic, hang or allocate without
//! bound. The same functions serve the AFL++ harness (`src/bin/afl.rs`, feature `afl`) and
//! the property pass CI runs (`tests/targets.rs`). Seed corpora are in `corpus/<target>/`.
//!
//! - `gguf`, `safetensors`, `llama2c`, `tokenizer_json`: model files, read through the
//!   project's readers exactly as `load_model` reads them (from a file in a temp dir);
//! - `chat_template`: a template and a message (split at the first NUL), compiled and
//!   rendered under small sandbox limits;
//! - `http`: a request body for one of the generating routes (chosen by the first byte),
//!   sent through the real router over the built-in model; the answer must not be a 5xx.

use std::path::PathBuf;

/// Every target by name.
pub const TARGETS: [(&str, fn(&[u8])); 6] = [
    ("gguf", gguf),
    ("safetensors", safetensors),
    ("llama2c", llama2c),
    ("tokenizer_json", tokenizer_json),
    ("chat_template", chat_template),
    ("http", http),
];

/// A scratch directory of this thread (targets write their input there as a file);
/// `KR_FUZZ_SCRATCH` names a fixed one (the AFL++ harness forks a process per input).
fn scratch() -> PathBuf {
    if let Some(dir) = std::env::var_os("KR_FUZZ_SCRATCH") {
        let _ = std::fs::create_dir_all(&dir);
        return PathBuf::from(dir);
    }
    let id = format!("{:?}", std::thread::current().id());
    let digits: String = id.chars().filter(char::is_ascii_digit).collect();
    let dir = std::env::temp_dir().join(format!("kr-fuzz-{}-{digits}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// A GGUF file: header, metadata, tensor directory, tokenizer and weights.
pub fn gguf(data: &[u8]) {
    let path = scratch().join("input.gguf");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(f) = kr_model::gguf::GgufFile::open(&path) {
        let _ = kr_model::Tokenizer::from_gguf(&f);
        let _ = kr_model::gguf_model::weights_from_gguf(&f);
    }
}

/// A `model.safetensors` file in a Hugging Face directory with a small Llama config.
pub fn safetensors(data: &[u8]) {
    let dir = scratch().join("hf");
    let _ = std::fs::create_dir_all(&dir);
    let config = r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":8,
        "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2,
        "num_key_value_heads":1,"vocab_size":16,"max_position_embeddings":64}"#;
    if std::fs::write(dir.join("config.json"), config).is_err()
        || std::fs::write(dir.join("model.safetensors"), data).is_err()
    {
        return;
    }
    if let Ok(set) = kr_model::safetensors::SafetensorsSet::open_dir(&dir) {
        let _ = set.matrix("model.embed_tokens.weight", 16, 8);
    }
    let _ = kr_model::hf::load_hf_dir(&dir);
}

/// A llama2.c checkpoint, and the same bytes as a llama2.c tokenizer.
pub fn llama2c(data: &[u8]) {
    let path = std::path::Path::new("fuzz.bin");
    let _ = kr_model::llama2c::weights_from_llama2c(path, data);
    let _ = kr_model::llama2c::tokenizer_from_llama2c(path, data, 512);
}

/// A Hugging Face tokenizer.json, then an encode and a decode with it.
pub fn tokenizer_json(data: &[u8]) {
    let path = scratch().join("tokenizer.json");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(t) = kr_model::Tokenizer::from_tokenizer_json(&path) {
        if let Ok(ids) = t.encode("Hello, world! 123", true) {
            let _ = t.decode(&ids);
        }
    }
}

/// A chat template (before the first NUL) rendering a conversation with one user message
/// (after it), under small limits.
pub fn chat_template(data: &[u8]) {
    let (src, msg) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b"hi"[..]),
    };
    let (Ok(src), msg) = (std::str::from_utf8(src), String::from_utf8_lossy(msg)) else {
        return;
    };
    let limits = kr_model::TemplateLimits {
        fuel: 200_000,
        max_output_bytes: 1 << 20,
        max_memory_bytes: 64 << 20,
        timeout: std::time::Duration::from_secs(2),
        ..kr_model::TemplateLimits::default()
    };
    if let Ok(t) = kr_model::ChatTemplate::with_limits(src, "<s>", "</s>", limits) {
        let _ = t.render(&[kr_model::ChatMessage::new("user", &msg)], true);
    }
}

/// The routes `http` sends to, chosen by the input's first byte.
const ROUTES: [&str; 6] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/api/generate",
    "/api/chat",
    "/tokenize",
    "/detokenize",
];

/// The router over the built-in model, answering at most 4 tokens, and the runtime it
/// lives in (both started once: the server's tasks outlive a request).
fn server() -> &'static (tokio::runtime::Runtime, axum::Router) {
    static SERVER: std::sync::OnceLock<(tokio::runtime::Runtime, axum::Router)> =
        std::sync::OnceLock::new();
    SERVER.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let mut cfg = kr_engine::EngineConfig::new(kr_engine::BUILTIN_MODEL);
        cfg.device = kr_engine::DeviceChoice::Cpu;
        let engine = kr_engine::start(cfg).expect("the built-in model loads");
        let server = kr_http::ServerConfig {
            max_tokens_cap: 4,
            ..kr_http::ServerConfig::default()
        };
        let router =
            rt.block_on(async { kr_http::router(kr_http::state::Inner::new(engine, server)) });
        (rt, router)
    })
}

/// A request body for a generating route; the answer must not be a server error.
pub fn http(data: &[u8]) {
    use tower::ServiceExt;
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let route = ROUTES[pick as usize % ROUTES.len()];
    let req = axum::http::Request::post(route)
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body.to_vec()));
    let Ok(req) = req else { return };
    let (rt, router) = server();
    let status = rt.block_on(async {
        let resp = router
            .clone()
            .oneshot(req)
            .await
            .expect("the router answers");
        let status = resp.status();
        let _ = axum::body::to_bytes(resp.into_body(), 1 << 24).await;
        status
    });
    assert!(!status.is_server_error(), "{route} answered {status}");
}
