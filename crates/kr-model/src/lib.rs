//! kr-model: everything about a model that is not arithmetic on a device.
//!
//! - [`gguf`], [`quant`], [`gguf_model`], [`gguf_moe`], [`gguf_gemma`]: reading GGUF files and
//!   their tensor encodings;
//! - [`llama2c`]: llama2.c checkpoints and tokenizer files;
//! - [`hf`], [`hf_tokenizer`], [`safetensors`]: Hugging Face model directories;
//! - [`config`], [`weights`]: the architecture parameters and weights the decoder needs;
//! - [`tokenizer`], [`spm`], [`chat`]: text in and out (E7);
//! - [`backend`], [`decoder`]: the Backend contract and the one decoder written against it.

pub mod backend;
pub mod chat;
pub mod config;
pub mod decoder;
pub mod error;
pub mod gguf;
pub mod gguf_gemma;
pub mod gguf_model;
pub mod gguf_moe;
pub mod hf;
pub mod hf_gemma;
pub mod hf_moe;
pub mod hf_tokenizer;
pub mod llama2c;
pub mod quant;
pub mod random;
pub mod safetensors;
pub mod spm;
pub mod strftime;
pub mod template_budget;
pub mod tokenizer;
pub mod weights;

pub use backend::{AttnMeta, Backend, KvLayout, Rope, RowSampling, SeqAttn};
pub use chat::{
    ChatContext, ChatMessage, ChatTemplate, RenderJobSpec, RenderSandbox, TemplateLimits,
};
pub use config::{AttentionExt, ModelConfig, RopeExtension, RopeStyle};
pub use decoder::Decoder;
pub use error::{ModelError, Result};
pub use template_budget::BudgetedAllocator;
pub use tokenizer::{IncrementalDecoder, Tokenizer};
pub use weights::{ModelWeights, RawTensor};
