//! The one error type of kr-model. Every variant names the file, tensor or field at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot open model file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a GGUF file (magic {magic:?}); expected a .gguf model")]
    NotGguf { path: PathBuf, magic: [u8; 4] },
    #[error("{path}: unsupported GGUF version {version}; supported: 2, 3")]
    GgufVersion { path: PathBuf, version: u32 },
    #[error("{path} is truncated or corrupt: {what}")]
    Truncated { path: PathBuf, what: String },
    #[error("{path}: tensor '{tensor}' has type {ggml_type}, which is not supported (supported: {supported}); re-quantise the file to one of these, e.g. `llama-quantize --allow-requantize IN.gguf OUT.gguf Q4_K_M`")]
    UnsupportedType {
        path: PathBuf,
        tensor: String,
        /// The type's GGML name and id, e.g. "IQ2_XXS (id 16)".
        ggml_type: String,
        supported: String,
    },
    #[error("{path}: missing tensor '{tensor}'")]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("{path}: tensor '{tensor}' has shape {actual:?}, expected {expected:?}")]
    Shape {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("{path}: metadata key '{key}' is missing or has the wrong type ({expected} expected)")]
    Metadata {
        path: PathBuf,
        key: String,
        expected: &'static str,
    },
    #[error("{path}: unsupported architecture '{arch}'; supported: {supported}")]
    Architecture {
        path: PathBuf,
        arch: String,
        supported: &'static str,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    /// The chat template broke one of its sandbox limits (fuel, depth, output, time).
    #[error("{0}")]
    TemplateLimit(String),
    /// The chat template cannot be trusted again (over its memory budget on a thread of
    /// the server, or it crashed its sandbox process): it is disabled for the model.
    #[error("{0}")]
    TemplateDisabled(String),
    /// A render went over its memory budget.
    #[error("{0}")]
    TemplateMemory(String),
    /// The sandbox that renders templates failed (not the template's fault).
    #[error("{0}")]
    TemplateSandbox(String),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
