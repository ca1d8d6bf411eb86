//! OpenAI API against the real engine (SmolLM2): greedy answer, stream = non-stream, seeds,
//! `n`, `stop`, logprobs, completions, models.

mod common;
use common::*;
use serde_json::{json, Value};

const QUESTION: &str = "What is the capital of France?";

fn content(v: &Value, i: usize) -> String {
    v["choices"][i]["message"]["content"]
        .as_str()
        .expect("content")
        .to_string()
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test]
async fn greedy_chat_answers_paris() {
    let Some(_) = smollm2() else { return };
    let body = chat_body(QUESTION, json!({"temperature": 0, "max_tokens": 20}));
    let (status, v) = post(shared(), "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(content(&v, 0), "The capital of France is Paris.");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let u = &v["usage"];
    assert!(u["prompt_tokens"].as_u64().unwrap() > 5);
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap())
    );
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test]
async fn stream_concatenates_to_the_non_streamed_text() {
    let Some(_) = smollm2() else { return };
    let extra =
        json!({"temperature": 0, "max_tokens": 40, "stream_options": {"include_usage": true}});
    let q = "Name three colours.";
    let (_, whole) = post(
        shared(),
        "/v1/chat/completions",
        &chat_body(q, extra.clone()),
    )
    .await;
    let mut body = chat_body(q, extra);
    body["stream"] = json!(true);
    let events = post_sse(shared(), "/v1/chat/completions", &body).await;
    assert_eq!(events.last(), Some(&json!("[DONE]")));
    let chunks = &events[..events.len() - 1];
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, content(&whole, 0));
    let finish = chunks
        .iter()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str());
    assert_eq!(finish, whole["choices"][0]["finish_reason"].as_str());
    let usage = &chunks.last().expect("usage chunk")["usage"];
    assert_eq!(
        usage["completion_tokens"],
        whole["usage"]["completion_tokens"]
    );
    assert_eq!(chunks.last().unwrap()["choices"], json!([]));
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test]
async fn same_seed_same_text_different_seeds_differ() {
    let Some(_) = smollm2() else { return };
    let run = |seed: u64| async move {
        let extra = json!({"temperature": 1.0, "max_tokens": 24, "seed": seed});
        let (s, v) = post(
            shared(),
            "/v1/chat/completions",
            &chat_body("Tell me a story.", extra),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        content(&v, 0)
    };
    let a = run(7).await;
    assert_eq!(a, run(7).await);
    assert_ne!(a, run(8).await);
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test]
async fn n_two_gives_two_choices_seeded_apart() {
    let Some(_) = smollm2() else { return };
    let extra = json!({"temperature": 1.0, "max_tokens": 16, "seed": 3, "n": 2});
    let (s, v) = post(
        shared(),
        "/v1/chat/completions",
        &chat_body("Tell me a story.", extra),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let choices = v["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 2);
    assert_eq!(choices[1]["index"], 1);
    assert_ne!(content(&v, 0), content(&v, 1));
    // Choice k uses seed + k: choice 1 of seed 3 is choice 0 of seed 4.
    let extra = json!({"temperature": 1.0, "max_tokens": 16, "seed": 4});
    let (_, one) = post(
        shared(),
        "/v1/chat/completions",
        &chat_body("Tell me a story.", extra),
    )
    .await;
    assert_eq!(content(&v, 1), content(&one, 0));
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test]
async fn stop_ends_output_before_the_stop_string() {
    let Some(_) = smollm2() else { return };
    let extra = json!({"temperature": 0, "max_tokens": 20, "stop": ["Paris"]});
    let (s, v) = post(
        shared(),
        "/v1/chat/completions",
        &chat_body(QUESTION, extra),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(content(&v, 0), "The capital of France is ");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let extra = json!({"temperature": 0, "max_tokens": 20, "stop": "France"});
    let (_, v) = post(
        shared(),
        "/v1/chat/completions",
        &chat_body(QUESTION, extra),
    )
    .await;
    assert_eq!(content(&v, 0), "The capital of ");
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test]
async fn chat_logprobs_are_consistent() {
    let Some(_) = smollm2() else { return };
    let extra = json!({"temperature": 0, "max_tokens": 8, "logprobs": true, "top_logprobs": 3});
    let (s, v) = post(
        shared(),
        "/v1/chat/completions",
        &chat_body(QUESTION, extra),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let entries = v["choices"][0]["logprobs"]["content"]
        .as_array()
        .expect("content");
    assert_eq!(
        entries.len() as u64,
        v["usage"]["completion_tokens"].as_u64().unwrap()
    );
    for e in entries {
        let top = e["top_logprobs"].as_array().expect("top");
        assert_eq!(top.len(), 3);
        assert!(e["logprob"].as_f64().unwrap() <= 0.0);
        // Greedy: the chosen token is the most likely one, with the same logprob.
        assert_eq!(top[0]["token"], e["token"]);
        assert_eq!(top[0]["logprob"], e["logprob"]);
    }
    let text: String = entries
        .iter()
        .map(|e| e["token"].as_str().unwrap())
        .collect();
    assert!(text.starts_with("The capital"), "{text}");
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test]
async fn completions_stream_and_logprobs() {
    let Some(_) = smollm2() else { return };
    let body = json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0, "logprobs": 2});
    let (s, v) = post(shared(), "/v1/completions", &body).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    let text = v["choices"][0]["text"].as_str().unwrap().to_string();
    let lp = &v["choices"][0]["logprobs"];
    let toks = lp["tokens"].as_array().unwrap();
    assert_eq!(
        toks.len(),
        6.min(v["usage"]["completion_tokens"].as_u64().unwrap() as usize)
    );
    for (i, t) in toks.iter().enumerate() {
        let top = lp["top_logprobs"][i].as_object().unwrap();
        assert_eq!(top.get(t.as_str().unwrap()), Some(&lp["token_logprobs"][i]));
    }
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    sb["logprobs"] = Value::Null;
    let events = post_sse(shared(), "/v1/completions", &sb).await;
    let streamed: String = events
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(streamed, text);
    assert_eq!(events.last(), Some(&json!("[DONE]")));
    let mut eb = body;
    eb["echo"] = json!(true);
    eb["logprobs"] = Value::Null;
    let (_, v) = post(shared(), "/v1/completions", &eb).await;
    assert_eq!(
        v["choices"][0]["text"].as_str().unwrap(),
        format!("The capital of France is{text}")
    );
}

#[cfg_attr(
    no_test_models,
    ignore = "needs the test models: set KR_TEST_MODELS or run scripts/fetch-test-models.sh"
)]
#[tokio::test]
async fn models_lists_the_loaded_model() {
    let Some(_) = smollm2() else { return };
    let (s, body) = get(shared(), "/v1/models").await;
    assert_eq!(s, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"][0]["id"], MODEL);
    assert_eq!(get(shared(), &format!("/v1/models/{MODEL}")).await.0, 200);
    assert_eq!(get(shared(), "/v1/models/nope").await.0, 404);
}
