//! Engine counters shared lock-free between the engine thread and its handles.

use crate::histogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Live counters and gauges; the engine thread writes, anyone reads.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub steps: AtomicU64,
    pub fast_path: AtomicU64,
    pub running: AtomicU64,
    pub waiting: AtomicU64,
    pub kv_blocks_used: AtomicU64,
    pub kv_blocks_total: AtomicU64,
    pub preemptions: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generation_tokens: AtomicU64,
    pub prefix_query_tokens: AtomicU64,
    pub prefix_hit_tokens: AtomicU64,
    pub requests_finished: AtomicU64,
    pub requests_aborted: AtomicU64,
    /// Wall time of each engine step (model forward and sampling).
    pub step_seconds: Histogram,
    /// Time from a request's arrival at the engine to its first scheduled step.
    pub queue_seconds: Histogram,
}

/// A plain copy of [`EngineStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    pub steps: u64,
    pub fast_path: u64,
    pub running: u64,
    pub waiting: u64,
    pub kv_blocks_used: u64,
    pub kv_blocks_total: u64,
    pub preemptions: u64,
    pub prompt_tokens: u64,
    pub generation_tokens: u64,
    pub prefix_query_tokens: u64,
    pub prefix_hit_tokens: u64,
    pub requests_finished: u64,
    pub requests_aborted: u64,
}

impl EngineStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            steps: self.steps.load(Relaxed),
            fast_path: self.fast_path.load(Relaxed),
            running: self.running.load(Relaxed),
            waiting: self.waiting.load(Relaxed),
            kv_blocks_used: self.kv_blocks_used.load(Relaxed),
            kv_blocks_total: self.kv_blocks_total.load(Relaxed),
            preemptions: self.preemptions.load(Relaxed),
            prompt_tokens: self.prompt_tokens.load(Relaxed),
            generation_tokens: self.generation_tokens.load(Relaxed),
            prefix_query_tokens: self.prefix_query_tokens.load(Relaxed),
            prefix_hit_tokens: self.prefix_hit_tokens.load(Relaxed),
            requests_finished: self.requests_finished.load(Relaxed),
            requests_aborted: self.requests_aborted.load(Relaxed),
        }
    }
}
