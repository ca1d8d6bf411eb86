//! kr-engine: the engine library applications embed.
//!
//! [`start`] loads a model and runs the engine loop on its own thread; the returned
//! [`EngineHandle`] submits requests and gets a [`RequestStream`] of [`Event`]s back.
//! Dropping a stream aborts its request and frees its KV blocks.

mod admission;
mod batch;
mod engine;
mod error;
pub mod grammar;
mod handle;
mod histogram;
mod inspect;
mod model;
pub mod pool;
pub mod runner;
pub mod sampler;
mod stats;
mod stats_json;
pub mod stop;
mod validate;

pub use engine::embed::{normalize, Pooling};
pub use engine::supervise::{BreakerConfig, BreakerState, Fault, FaultHook, FATAL_EXIT_CODE};
pub use engine::{start, EngineConfig};
pub use error::{EngineError, Result};
pub use grammar::{CompiledGrammar, Constraint, ConstraintKind, GrammarCompiler};
pub use handle::{
    EngineHandle, Event, GenerateRequest, ModelInfo, Prompt, RequestOptions, RequestStream, Usage,
};
pub use histogram::{Histogram, HistogramSnapshot, LATENCY_BUCKETS};
pub use inspect::{inspect_model, ExpertSummary, ModelSummary, TokenizerSummary};
pub use kr_core::policy::{AdaptiveConfig, LatencyConfig, WindowLevel};
pub use kr_core::{CoreError, FinishReason, PolicyConfig, Priority, SamplingParams};
pub use kr_model::{AttentionExt, RopeExtension};
pub use kr_model::{AttnMeta, ModelConfig, ModelError, ModelWeights, RowSampling, SeqAttn};
pub use kr_model::{
    BudgetedAllocator, ChatContext, ChatMessage, RenderJobSpec, RenderSandbox, TemplateLimits,
};
pub use model::{
    load_model, random_weights, served_name, LoadedModel, BUILTIN_MODEL, RANDOM_PREFIX,
};
pub use pool::{KeepAlive, ModelLease, ModelPool, ModelSpec, ModelStatus, SamplingDefaults};
pub use runner::{
    tuning_switches, DTypeChoice, DeviceChoice, KvCacheDtype, Runner, RunnerConfig, TuningSwitch,
};
pub use stats::{EngineStats, SchedStats, StatsSnapshot, StepPercentiles};
pub use validate::{RequestDraft, ValidatedRequest};
