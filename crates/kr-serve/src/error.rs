//! The binary's one error type, mapped to a message, a hint and an exit code.

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Engine(#[from] kr_engine::EngineError),
    #[error(transparent)]
    Hub(#[from] kr_hub::HubError),
    #[error("{0}")]
    Usage(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("generation failed: {0}")]
    Generation(String),
    /// A benchmark could not run or write its outputs.
    #[error("{0}")]
    Bench(String),
    /// `bench compare` found a regression (exit code 1, after the table).
    #[error("{0}")]
    Regression(String),
}

impl CliError {
    pub fn hint(&self) -> Option<String> {
        use kr_engine::EngineError as E;
        use kr_engine::ModelError as M;
        match self {
            CliError::Engine(E::Model(M::Io { .. })) => Some(
                "check the --model path; models in the repo's tests live under ../shared/models/"
                    .into(),
            ),
            CliError::Engine(E::Model(M::Truncated { .. })) => {
                Some("the file is incomplete: download it again".into())
            }
            CliError::Engine(E::Core(kr_core::CoreError::InvalidParam { .. })) => {
                Some("see `kr-serve run --help` for the allowed values".into())
            }
            CliError::Engine(E::NoChatTemplate) => {
                Some("pass --raw to use the prompt as plain text".into())
            }
            _ => None,
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) | CliError::Engine(kr_engine::EngineError::Core(_)) => 2,
            _ => 1,
        }
    }
}

pub type Result<T, E = CliError> = std::result::Result<T, E>;
