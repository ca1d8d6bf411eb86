//! Validating a request, once: every API (OpenAI, Ollama, the library) turns what a client
//! sent into a [`ValidatedRequest`] here, with the same checks and the same messages; the
//! engine trusts it and keeps only debug assertions.
//!
//! Errors are [`CoreError`]s naming the engine's field (`max_tokens`, `prompt`,
//! `temperature`, …); an API that calls a field otherwise (`num_predict`, `messages`)
//! renames it at its edge.

use crate::error::Result;
use crate::grammar::CompiledGrammar;
use crate::handle::{EngineHandle, RequestOptions};
use kr_core::sampling::MAX_TOP_LOGPROBS;
use kr_core::{CoreError, SamplingParams};

/// A tokenised request as a client sent it: `max_tokens: None` asks for as many tokens as
/// fit (at most the caller's cap).
#[derive(Debug, Clone)]
pub struct RequestDraft {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub max_tokens: Option<u32>,
    pub options: RequestOptions,
}

/// A request that passed [`EngineHandle::validate`]: its sampling values are in range, its
/// prompt is non-empty token ids of the vocabulary, and prompt plus `params.max_tokens`
/// fit both the context window and the KV pool.
#[derive(Debug, Clone)]
pub struct ValidatedRequest {
    pub(crate) prompt: Vec<u32>,
    pub(crate) params: SamplingParams,
    pub(crate) options: RequestOptions,
    pub(crate) grammar: Option<CompiledGrammar>,
}

fn invalid(param: &'static str, value: impl ToString, allowed: String) -> CoreError {
    CoreError::InvalidParam {
        param,
        value: value.to_string(),
        allowed,
    }
}

impl EngineHandle {
    /// Checks `draft` against the model and `max_tokens_cap` (the most tokens a request may
    /// ask for, and the default when it names none).
    pub fn validate(&self, draft: RequestDraft, max_tokens_cap: u32) -> Result<ValidatedRequest> {
        let vocab = self.info.config.vocab_size;
        let mut params = draft.params;
        let prompt = draft.prompt;
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(invalid("prompt", bad, format!("token ids 0..{vocab}")).into());
        }
        params.max_tokens =
            self.settle_max_tokens(prompt.len(), draft.max_tokens, max_tokens_cap)?;
        params.validate(vocab)?;
        if let Some(n) = draft
            .options
            .prompt_logprobs
            .filter(|&n| n > MAX_TOP_LOGPROBS)
        {
            return Err(invalid("prompt_logprobs", n, format!("0..={MAX_TOP_LOGPROBS}")).into());
        }
        let grammar = match &draft.options.constraint {
            None => None,
            Some(_) if params.ignore_eos => {
                return Err(invalid(
                    "ignore_eos",
                    true,
                    "false with a constrained output (it ends where the grammar does)".into(),
                )
                .into())
            }
            Some(c) => Some(self.grammar_compiler()?.compile(c)?),
        };
        Ok(ValidatedRequest {
            prompt,
            params,
            options: draft.options,
            grammar,
        })
    }

    /// The prompt against the context window and the KV pool, and `max_tokens` against what
    /// is left and the cap; `None` takes what fits, at most the cap.
    fn settle_max_tokens(&self, prompt_len: usize, asked: Option<u32>, cap: u32) -> Result<u32> {
        let info = &self.info;
        let pool = info.num_kv_blocks * info.block_size;
        if prompt_len == 0 {
            return Err(CoreError::EmptyPrompt.into());
        }
        if prompt_len >= info.max_model_len || prompt_len >= pool {
            return Err(CoreError::PromptTooLong {
                prompt_tokens: prompt_len,
                max_model_len: info.max_model_len.min(pool),
            }
            .into());
        }
        // What is left of both the context window and the pool (the prompt fits in both).
        let left = (info.max_model_len - prompt_len).min(pool - prompt_len);
        let room = u32::try_from(left).unwrap_or(u32::MAX);
        let most = room.min(cap);
        let why = match cap < room {
            true => "the server's limit".to_string(),
            false => format!(
                "a prompt of {prompt_len} tokens leaves {room} of the context window of {} and the KV cache of {pool} tokens",
                info.max_model_len
            ),
        };
        match asked {
            None => Ok(most),
            Some(m) if m == 0 || m > most => {
                Err(invalid("max_tokens", m, format!("1..={most} ({why})")).into())
            }
            Some(m) => Ok(m),
        }
    }
}
