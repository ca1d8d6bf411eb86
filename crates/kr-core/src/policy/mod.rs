//! Scheduler policies around the token-budget [`crate::Scheduler`]: when to
//! admit waiting requests (fast path, fixed or adaptive admission window, urgent requests),
//! how large the running batch may be (latency controller) and in which order waiting
//! requests start (priorities with aging, applied inside the scheduler).
//!
//! Everything here is pure: no clock, no threads. Times are `Duration`s since an epoch the
//! caller chooses (the engine uses its start), so tests drive the policies with a fake clock.
//!
//! Invariants:
//! - the window never delays a request that reaches an idle engine with an empty queue when
//!   the fast path is on (the caller skips the gate on that turn; [`Policies::fast_path`]);
//! - an urgent waiting request opens the gate at once;
//! - the gate never holds longer than the window after the oldest waiting request arrived.

pub mod latency;
pub mod priority;
pub mod window;

pub use latency::{Adjustment, LatencyConfig, LatencyController};
pub use priority::Priority;
pub use window::{AdaptiveConfig, AdaptiveWindow, Transition, WindowLevel};

use std::time::Duration;

/// Every scheduler policy setting. The default changes nothing: fast path on, no window,
/// no latency controller; aging one level per second.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyConfig {
    /// An idle engine starts a request in the turn it arrives (S1).
    pub fast_path: bool,
    /// The fixed admission window (S2); zero = off. Ignored when `adaptive` is set.
    pub window: Duration,
    /// The adaptive window (S3), replacing the fixed one.
    pub adaptive: Option<AdaptiveConfig>,
    /// The latency controller (S4).
    pub latency: Option<LatencyConfig>,
    /// Aging of waiting requests (S5): one priority level per step; `None` = no aging.
    pub aging_step: Option<Duration>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            fast_path: true,
            window: Duration::ZERO,
            adaptive: None,
            latency: None,
            aging_step: Some(Duration::from_secs(1)),
        }
    }
}

/// What the gate needs to know about the queues at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueView {
    pub now: Duration,
    /// Arrival of the longest-waiting request, if any waits.
    pub oldest_waiting: Option<Duration>,
    pub urgent_waiting: bool,
    pub waiting: usize,
    pub running: usize,
    /// Running sequences allowed now.
    pub max_running: usize,
}

/// The gate's answer: admit waiting requests in this step, or hold them until a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Admit,
    HoldUntil(Duration),
}

/// The admission window's decision (S2): hold waiting requests until the window since the
/// oldest one's arrival has passed, so that simultaneous arrivals share one prefill step.
/// Admits at once when the window is zero, nothing waits, an urgent request waits, or the
/// waiting requests already fill every free running slot (waiting longer gains nothing).
pub fn gate(window: Duration, q: &QueueView) -> Gate {
    let free = q.max_running.saturating_sub(q.running);
    let Some(oldest) = q.oldest_waiting else {
        return Gate::Admit;
    };
    if window.is_zero() || q.waiting == 0 || q.urgent_waiting || q.waiting >= free {
        return Gate::Admit;
    }
    let deadline = oldest.saturating_add(window);
    if q.now >= deadline {
        Gate::Admit
    } else {
        Gate::HoldUntil(deadline)
    }
}

/// The policies' live state, driven by the engine loop once per turn and once per step.
#[derive(Debug, Clone)]
pub struct Policies {
    cfg: PolicyConfig,
    adaptive: Option<AdaptiveWindow>,
    latency: Option<LatencyController>,
}

impl Policies {
    pub fn new(cfg: PolicyConfig) -> Self {
        Self {
            adaptive: cfg.adaptive.clone().map(AdaptiveWindow::new),
            latency: cfg.latency.clone().map(LatencyController::new),
            cfg,
        }
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.cfg
    }
    pub fn fast_path(&self) -> bool {
        self.cfg.fast_path
    }
    pub fn adaptive(&self) -> Option<&AdaptiveWindow> {
        self.adaptive.as_ref()
    }
    pub fn latency(&self) -> Option<&LatencyController> {
        self.latency.as_ref()
    }

    /// The admission window in force.
    pub fn window(&self) -> Duration {
        self.adaptive
            .as_ref()
            .map_or(self.cfg.window, |a| a.window())
    }

    /// Samples the queue depth (adaptive window only); returns the transition, if any.
    pub fn observe_queue(&mut self, depth: usize) -> Option<Transition> {
        self.adaptive.as_mut()?.observe(depth)
    }

    /// The gate with the window in force.
    pub fn gate(&self, q: &QueueView) -> Gate {
        gate(self.window(), q)
    }

    /// Feeds one step time to the latency controller; returns its change, if any.
    pub fn observe_step(&mut self, step: Duration) -> Option<Adjustment> {
        self.latency.as_mut()?.observe(step)
    }

    /// The maximum running batch: the controller's, never above `hard_cap` (the engine's
    /// `max_num_seqs`); `hard_cap` without a controller.
    pub fn max_running(&self, hard_cap: usize) -> usize {
        self.latency
            .as_ref()
            .map_or(hard_cap, |l| l.max_batch().min(hard_cap))
            .max(1)
    }
}

#[cfg(test)]
mod tests;
