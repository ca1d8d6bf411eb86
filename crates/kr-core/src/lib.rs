//! kr-core: the pure heart of the engine. No tensors, no threads, no clocks, no I/O.
//!
//! - [`sampling`]: validated sampling parameters (E6).
//! - [`block_pool`]: the paged KV block pool with reference counts and prefix caching by
//!   chained block hashes (E4).
//! - [`scheduler`]: the iteration-level token-budget scheduler (E5): chunked prefill, mixed
//!   prefill/decode steps, preemption by recompute, priority order with aging.
//! - [`policy`]: scheduler policies (S1–S5): admission window (fixed or adaptive), latency
//!   controller of the maximum batch, priorities. Time is always an argument.
//!
//! Everything here is deterministic and unit-testable with hand-made step outputs.

pub mod block_pool;
pub mod error;
pub mod policy;
pub mod sampling;
pub mod scheduler;

pub use block_pool::{BlockId, BlockPool};
pub use error::CoreError;
pub use policy::{PolicyConfig, Priority};
pub use sampling::SamplingParams;
pub use scheduler::{
    FinishReason, RequestId, ScheduledSeq, Scheduler, SchedulerConfig, SeqUpdate, StepPlan,
    AHEAD_TOKEN,
};
