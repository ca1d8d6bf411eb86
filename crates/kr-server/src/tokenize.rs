//! POST /tokenize and /detokenize (SPEC A3), vLLM's shapes: `{prompt | messages}` →
//! `{tokens, count, max_model_len}`; `{tokens}` → `{prompt}`. Work runs on the blocking pool.

use crate::error::{ApiError, Result};
use crate::extract::{check_unknown, ApiJson};
use crate::gen;
use crate::openai::chat::MessageIn;
use crate::state::AppState;
use axum::extract::State;
use axum::Json;
use kr_engine::{ChatMessage, Prompt};
use serde::Deserialize;
use serde_json::{json, Map, Value};

#[derive(Debug, Deserialize)]
pub struct TokenizeRequest {
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub messages: Option<Vec<MessageIn>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
pub struct DetokenizeRequest {
    pub model: Option<String>,
    pub tokens: Vec<u32>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn check(state: &AppState, model: &Option<String>, extra: &Map<String, Value>) -> Result<()> {
    check_unknown(state, extra)?;
    match model {
        Some(m) => state.check_model(m),
        None => Ok(()),
    }
}

pub async fn tokenize(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<TokenizeRequest>,
) -> Result<Json<Value>> {
    check(&state, &req.model, &req.extra)?;
    let prompt = match (req.prompt, req.messages) {
        (Some(p), None) => Prompt::Text(p),
        (None, Some(msgs)) => Prompt::Chat(
            msgs.iter()
                .map(|m| ChatMessage::new(&m.role, &m.text()))
                .collect(),
        ),
        _ => {
            return Err(ApiError::bad(
                "prompt",
                "send exactly one of `prompt` or `messages`",
            ))
        }
    };
    let ids = gen::tokenize(&state, prompt).await?;
    Ok(Json(json!({
        "count": ids.len(),
        "max_model_len": state.engine.info().max_model_len,
        "tokens": ids,
    })))
}

pub async fn detokenize(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<DetokenizeRequest>,
) -> Result<Json<Value>> {
    check(&state, &req.model, &req.extra)?;
    let vocab = state.engine.info().config.vocab_size;
    if let Some(bad) = req.tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::bad(
            "tokens",
            format!("token id {bad} is out of range: allowed 0..{vocab}"),
        ));
    }
    let engine = state.engine.clone();
    let text = tokio::task::spawn_blocking(move || engine.tokenizer().decode(&req.tokens))
        .await
        .map_err(|e| ApiError::Internal(format!("tokenizer task failed: {e}")))?
        .map_err(|e| ApiError::bad("tokens", e.to_string()))?;
    Ok(Json(json!({ "prompt": text })))
}
