//! Engine counters shared lock-free between the engine thread and its handles, and the
//! scheduler statistics: window, latency controller, batch sizes, step times.

use crate::histogram::{Histogram, HistogramSnapshot};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

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
    /// Tokens chosen by a device sampler (only ids crossed from the GPU).
    pub device_sampled_tokens: AtomicU64,
    /// Steps launched while the step before was still on the device.
    pub overlapped_steps: AtomicU64,
    /// Steps that failed (a device error or a panic), engine-loop restarts after a panic,
    /// and requests queued again after a failed step (`supervise.rs`).
    pub step_failures: AtomicU64,
    pub restarts: AtomicU64,
    pub retries: AtomicU64,
    /// The circuit breaker: 0 closed, 1 open, 2 half-open.
    pub breaker_state: AtomicU64,
    /// Wall time of each engine step (model forward and sampling).
    pub step_seconds: Histogram,
    /// Time from a request's arrival at the engine to its first scheduled step.
    pub queue_seconds: Histogram,
    /// Scheduler policy state and distributions (S7).
    pub sched: SchedStats,
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
    pub device_sampled_tokens: u64,
    pub overlapped_steps: u64,
    pub step_failures: u64,
    pub restarts: u64,
    pub retries: u64,
    pub breaker_state: u64,
}

impl StatsSnapshot {
    /// The sum of two engines' counters and gauges (the breaker state: the worse).
    pub fn add(&mut self, o: &StatsSnapshot) {
        self.steps += o.steps;
        self.fast_path += o.fast_path;
        self.running += o.running;
        self.waiting += o.waiting;
        self.kv_blocks_used += o.kv_blocks_used;
        self.kv_blocks_total += o.kv_blocks_total;
        self.preemptions += o.preemptions;
        self.prompt_tokens += o.prompt_tokens;
        self.generation_tokens += o.generation_tokens;
        self.prefix_query_tokens += o.prefix_query_tokens;
        self.prefix_hit_tokens += o.prefix_hit_tokens;
        self.requests_finished += o.requests_finished;
        self.requests_aborted += o.requests_aborted;
        self.device_sampled_tokens += o.device_sampled_tokens;
        self.overlapped_steps += o.overlapped_steps;
        self.step_failures += o.step_failures;
        self.restarts += o.restarts;
        self.retries += o.retries;
        self.breaker_state = self.breaker_state.max(o.breaker_state);
    }
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
            device_sampled_tokens: self.device_sampled_tokens.load(Relaxed),
            overlapped_steps: self.overlapped_steps.load(Relaxed),
            step_failures: self.step_failures.load(Relaxed),
            restarts: self.restarts.load(Relaxed),
            retries: self.retries.load(Relaxed),
            breaker_state: self.breaker_state.load(Relaxed),
        }
    }
}

/// Upper bounds of the batch-size histogram (sequences in one step).
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// A histogram of counts (sequences per step), lock-free like [`Histogram`].
#[derive(Debug)]
pub struct CountHistogram {
    buckets: Vec<AtomicU64>,
    sum: AtomicU64,
    count: AtomicU64,
}

impl Default for CountHistogram {
    fn default() -> Self {
        Self {
            buckets: (0..=BATCH_BUCKETS.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

impl CountHistogram {
    pub fn observe(&self, n: usize) {
        let i = BATCH_BUCKETS
            .iter()
            .position(|&b| n as f64 <= b)
            .unwrap_or(BATCH_BUCKETS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum.fetch_add(n as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// A snapshot in the latency histogram's shape; `sum_seconds` holds the sum of counts.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: BATCH_BUCKETS,
            counts: self.buckets.iter().map(|b| b.load(Relaxed)).collect(),
            sum_seconds: self.sum.load(Relaxed) as f64,
            count: self.count.load(Relaxed),
        }
    }
}

/// Step times of the last [`STEP_RING`] steps, for exact percentiles. The engine thread
/// writes one slot per step with a relaxed store; readers copy and sort, never blocking it.
pub const STEP_RING: usize = 1024;

#[derive(Debug)]
pub struct StepRing {
    slots: Vec<AtomicU64>,
    next: AtomicU64,
}

impl Default for StepRing {
    fn default() -> Self {
        Self {
            slots: (0..STEP_RING).map(|_| AtomicU64::new(0)).collect(),
            next: AtomicU64::new(0),
        }
    }
}

/// Step-time percentiles over the recent steps.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct StepPercentiles {
    pub samples: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
}

impl StepRing {
    pub fn record(&self, d: Duration) {
        let i = self.next.fetch_add(1, Relaxed) as usize % STEP_RING;
        let ns = d.as_nanos().clamp(1, u64::MAX as u128) as u64;
        self.slots[i].store(ns, Relaxed);
    }

    /// Nearest-rank percentiles of the recorded steps (zeros before the first).
    pub fn percentiles(&self) -> StepPercentiles {
        let mut v: Vec<u64> = self
            .slots
            .iter()
            .map(|s| s.load(Relaxed))
            .filter(|&ns| ns > 0)
            .collect();
        if v.is_empty() {
            return StepPercentiles::default();
        }
        v.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
            v[rank - 1] as f64 * 1e-6
        };
        StepPercentiles {
            samples: v.len(),
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
        }
    }
}

/// What the scheduler policies publish; the engine thread writes.
#[derive(Debug, Default)]
pub struct SchedStats {
    /// The admission window in force, in nanoseconds (0 = off).
    pub window_ns: AtomicU64,
    /// Transitions of the adaptive window into low / medium / high.
    pub window_transitions: [AtomicU64; 3],
    /// EMA of the queue depth, times 1000.
    pub queue_depth_ema_milli: AtomicU64,
    /// Engine turns in which the window held waiting requests back.
    pub window_holds: AtomicU64,
    /// Running sequences allowed now (the latency controller's, or `max_num_seqs`).
    pub max_batch: AtomicU64,
    pub latency_degrades: AtomicU64,
    pub latency_recoveries: AtomicU64,
    /// EMA of the step time seen by the latency controller, in nanoseconds.
    pub step_ema_ns: AtomicU64,
    /// Requests accepted by the engine, by priority (low, normal, high, urgent).
    pub requests_by_priority: [AtomicU64; 4],
    /// Sequences in each step.
    pub batch_size: CountHistogram,
    pub step_times: StepRing,
}
