//! The one error type of kr-engine.

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] kr_model::ModelError),
    #[error(transparent)]
    Core(#[from] kr_core::CoreError),
    #[error("model file {path} is not a supported format; supported: .gguf files, llama2.c .bin checkpoints and Hugging Face model directories (config.json + *.safetensors)")]
    UnsupportedFormat { path: String },
    #[error("the model has no chat template; send a raw prompt instead")]
    NoChatTemplate,
    /// A request's constraint (JSON schema, regex, grammar, choices) the grammar engine
    /// cannot compile; `field` is the request field it came from.
    #[error("{field}: {message}")]
    Grammar {
        field: &'static str,
        message: String,
    },
    #[error("the engine has stopped")]
    Stopped,
    /// A request named a model the server does not have.
    #[error("model `{name}` does not exist; available: {available}")]
    UnknownModel { name: String, available: String },
    /// A model needs more memory than the whole budget.
    #[error("model `{name}` needs {bytes} bytes, more than the memory budget of {budget} bytes")]
    ModelTooLarge {
        name: String,
        bytes: u64,
        budget: u64,
    },
    /// A model could not be loaded (or unloaded) because the models holding the memory are
    /// all serving requests.
    #[error("model `{name}` cannot be loaded or unloaded now: the memory is held by models serving requests (waited {waited:?}); retry later")]
    ModelBusy {
        name: String,
        waited: std::time::Duration,
    },
    /// Steps keep failing: the circuit breaker refuses new requests for `retry_after`.
    #[error("the engine is refusing new requests after repeated failed steps (circuit breaker open); retry in {retry_after:.1?}")]
    CircuitOpen { retry_after: std::time::Duration },
    /// A request the engine accepted failed while it ran (the step's error, in words).
    #[error("the request failed: {0}")]
    Failed(String),
    #[error("invalid engine configuration: {0}")]
    Config(String),
    /// The device failed or cannot be used (no GPU, a missing library, out of memory, a
    /// failed step).
    #[error(transparent)]
    Device(#[from] kr_cuda::CudaError),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

impl EngineError {
    /// A device error after which the GPU context is unusable (the process must restart).
    pub fn is_fatal_device_error(&self) -> bool {
        matches!(self, EngineError::Device(e) if e.is_fatal())
    }
}
