//! The one error type of kr-core.

/// Errors raised by the core: invalid parameters and impossible requests.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum CoreError {
    /// A request parameter is outside its allowed range.
    #[error("invalid value {value} for `{param}`: allowed {allowed}")]
    InvalidParam {
        param: &'static str,
        value: String,
        allowed: String,
    },
    /// A request without a single prompt token.
    #[error("the prompt is empty; send at least one token")]
    EmptyPrompt,
    /// The prompt plus the requested tokens cannot fit in the model's context.
    #[error("prompt has {prompt_tokens} tokens but the context window is {max_model_len}")]
    PromptTooLong {
        prompt_tokens: usize,
        max_model_len: usize,
    },
    /// The prompt needs more KV blocks than the whole pool holds.
    #[error(
        "prompt needs {needed} KV blocks but the pool has only {total}; raise the KV cache size"
    )]
    PoolTooSmall { needed: usize, total: usize },
    /// A request id was submitted twice.
    #[error("request id {0} is already in use")]
    DuplicateRequest(u64),
}
