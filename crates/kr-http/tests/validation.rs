//! Requests are validated once, in the engine, for every API: the same invalid value gets
//! the same message through OpenAI, Ollama and the library, up to the field's name in that
//! API (`max_tokens` / `num_predict`). And `usage.prompt_tokens_details.cached_tokens`
//! counts the prompt tokens the prefix cache served.

mod common;
use common::*;
use kr_engine::{ChatMessage, EngineHandle, GenerateRequest, Prompt, SamplingParams};
use kr_http::ServerConfig;
use serde_json::{json, Value};

const QUESTION: &str = "What is the capital of France?";

/// The library's message for a chat request with `params`.
fn library_error(engine: &EngineHandle, params: SamplingParams) -> String {
    let prompt = Prompt::Chat(vec![ChatMessage::new("user", QUESTION)]);
    match engine.submit(GenerateRequest { prompt, params }) {
        Ok(_) => panic!("the library accepted an invalid request"),
        Err(e) => e.to_string(),
    }
}

/// OpenAI's message (and the status) for a chat request with `extra` fields.
async fn openai_error(base: &str, extra: Value) -> (u16, String) {
    let (status, v) = post(base, "/v1/chat/completions", &chat_body(QUESTION, extra)).await;
    let message = v["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (status, message)
}

/// Ollama's message (and the status) for a chat request with `options`.
async fn ollama_error(base: &str, options: Value) -> (u16, String) {
    let body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": QUESTION}],
        "stream": false,
        "options": options,
    });
    let (status, v) = post(base, "/api/chat", &body).await;
    (status, v["error"].as_str().unwrap_or_default().to_string())
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test]
async fn an_invalid_value_gets_one_message_in_every_api() {
    let Some(_) = smollm2() else { return };
    let engine = engine(|_| {});
    // A cap above the context window, so every API's limit is the model's.
    let cfg = ServerConfig {
        max_tokens_cap: 1 << 20,
        ..ServerConfig::default()
    };
    let server = spawn(engine.clone(), cfg);
    let base = server.base.as_str();

    let hot = SamplingParams {
        temperature: 5.0,
        ..SamplingParams::default()
    };
    let lib = library_error(&engine, hot);
    assert!(
        lib.contains("`temperature`") && lib.contains("0.0..=2.0"),
        "{lib}"
    );
    assert_eq!(
        openai_error(base, json!({"temperature": 5})).await,
        (400, lib.clone())
    );
    assert_eq!(
        ollama_error(base, json!({"temperature": 5})).await,
        (400, lib)
    );

    for asked in [0u32, 1_000_000] {
        let lib = library_error(&engine, SamplingParams::greedy(asked));
        assert!(
            lib.contains("`max_tokens`") && lib.contains("allowed 1..="),
            "{lib}"
        );
        let openai = openai_error(base, json!({"max_tokens": asked})).await;
        assert_eq!(openai, (400, lib.clone()));
        let ollama = ollama_error(base, json!({"num_predict": asked})).await;
        assert_eq!(ollama, (400, lib.replace("`max_tokens`", "`num_predict`")));
    }
    drop(server);
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test]
async fn cached_tokens_count_the_prefix_cache_hit() {
    let Some(_) = smollm2() else { return };
    let server = spawn(engine(|_| {}), ServerConfig::default());
    let body = chat_body(
        "Tell me about the history of Paris, the capital of France, in one sentence.",
        json!({"temperature": 0, "max_tokens": 4}),
    );
    let mut cached = Vec::new();
    for _ in 0..2 {
        let (status, v) = post(&server.base, "/v1/chat/completions", &body).await;
        assert_eq!(status, 200, "{v}");
        let prompt = v["usage"]["prompt_tokens"].as_u64().expect("prompt_tokens");
        let hit = v["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .expect("cached_tokens");
        assert!(hit < prompt, "{v}");
        cached.push(hit);
    }
    assert_eq!(cached[0], 0, "a fresh server has nothing cached");
    assert!(
        cached[1] > 0,
        "the repeated prompt was served from the cache"
    );

    // Ollama's prompt_eval_count stays the whole prompt.
    let ollama = json!({"model": MODEL, "prompt": "Paris is", "stream": false,
                        "options": {"temperature": 0, "num_predict": 2}});
    let (_, first) = post(&server.base, "/api/generate", &ollama).await;
    let (_, again) = post(&server.base, "/api/generate", &ollama).await;
    assert_eq!(first["prompt_eval_count"], again["prompt_eval_count"]);
    drop(server);
}
