//! The latency controller: tunes the maximum batch (running sequences) from an
//! EMA of the engine's step time against a p99 target, after mlx-serving's auto-tuner.
//!
//! Every `interval` steps the EMA is compared with the target: above it (missed), the
//! maximum batch is halved, never below `min_batch`; at or below it (met), it grows by one,
//! never above `max_batch`. Multiplicative decrease and additive increase converge without
//! the batch jumping back to where the target was missed. The controller starts at
//! `max_batch`, so with a fast model nothing changes.
//!
//! Invariants: `min_batch <= max_batch() <= max_batch`; counters only grow. Pure: step
//! times are arguments, there is no clock inside.

use std::time::Duration;

/// Settings of the latency controller; the defaults are mlx-serving's.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyConfig {
    /// The step-time target (mlx-serving's `p99_threshold_ms`).
    pub target: Duration,
    pub min_batch: usize,
    pub max_batch: usize,
    /// Steps between two decisions.
    pub interval: u32,
    /// Weight of the newest step time in the EMA, in (0, 1].
    pub alpha: f64,
}

impl Default for LatencyConfig {
    fn default() -> Self {
        Self {
            target: Duration::from_millis(100),
            min_batch: 2,
            max_batch: 8,
            interval: 10,
            alpha: 0.3,
        }
    }
}

/// A change of the maximum batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adjustment {
    pub from: usize,
    pub to: usize,
}

/// The controller's state.
#[derive(Debug, Clone)]
pub struct LatencyController {
    cfg: LatencyConfig,
    ema_secs: Option<f64>,
    steps: u32,
    current: usize,
    degrades: u64,
    recoveries: u64,
}

impl LatencyController {
    /// A controller at `max_batch` (bounds are made consistent: `1 <= min <= max`).
    pub fn new(mut cfg: LatencyConfig) -> Self {
        cfg.min_batch = cfg.min_batch.max(1);
        cfg.max_batch = cfg.max_batch.max(cfg.min_batch);
        cfg.interval = cfg.interval.max(1);
        let current = cfg.max_batch;
        Self {
            cfg,
            ema_secs: None,
            steps: 0,
            current,
            degrades: 0,
            recoveries: 0,
        }
    }

    pub fn config(&self) -> &LatencyConfig {
        &self.cfg
    }
    /// The maximum batch in force.
    pub fn max_batch(&self) -> usize {
        self.current
    }
    /// The EMA of the step time (zero before the first step).
    pub fn ema(&self) -> Duration {
        Duration::from_secs_f64(self.ema_secs.unwrap_or(0.0))
    }
    pub fn degrades(&self) -> u64 {
        self.degrades
    }
    pub fn recoveries(&self) -> u64 {
        self.recoveries
    }

    /// Takes one step's wall time; every `interval` steps returns the change it decided.
    pub fn observe(&mut self, step: Duration) -> Option<Adjustment> {
        let s = step.as_secs_f64();
        let a = self.cfg.alpha.clamp(f64::MIN_POSITIVE, 1.0);
        let ema = self.ema_secs.map_or(s, |e| a * s + (1.0 - a) * e);
        self.ema_secs = Some(ema);
        self.steps += 1;
        if self.steps < self.cfg.interval {
            return None;
        }
        self.steps = 0;
        let from = self.current;
        if ema > self.cfg.target.as_secs_f64() {
            self.current = (from / 2).max(self.cfg.min_batch);
            if self.current < from {
                self.degrades += 1;
            }
        } else {
            self.current = (from + 1).min(self.cfg.max_batch);
            if self.current > from {
                self.recoveries += 1;
            }
        }
        (self.current != from).then_some(Adjustment {
            from,
            to: self.current,
        })
    }
}
