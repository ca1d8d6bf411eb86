//! Supervision of the engine loop: a step that panics or that the device fails ends only
//! the requests in that step, the loop restarts, and a circuit breaker stops taking work
//! while steps keep failing.
//!
//! - A failed step (a backend error, or a panic caught around the step) counts once. Its
//!   requests that had produced no token are queued again once, transparently (their KV
//!   blocks freed first); the others end with `Event::Error` naming the cause. Retried
//!   requests go back one at a time, each after the one before has run a step, so one
//!   request that breaks every step it is in takes no other with it twice.
//! - After a panic the loop restarts: the device's in-flight work is dropped and every
//!   request outside the failed step goes on with its KV blocks. Weights are read-only on
//!   the host and on the GPU, so they stay loaded; a fatal device error (illegal address,
//!   launch failure, ECC: the CUDA context is lost) exits the process instead (status
//!   [`FATAL_EXIT_CODE`]) so that an orchestrator restarts it.
//! - [`Breaker`]: after `threshold` failed steps in a row it opens: new requests are refused
//!   (`EngineError::CircuitOpen` with the time left) and the engine reports not ready;
//!   after `cooldown` one probe request is let in (half-open): a step that succeeds closes
//!   the breaker, a failure opens it again.
//!
//! Invariant: a request is retried at most once, and only before its first token, so a
//! client never sees a token twice.

use super::EngineLoop;
use crate::error::EngineError;
use crate::handle::Event;
use kr_core::scheduler::NewRequest;
use kr_core::{RequestId, StepPlan};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The process exit status after a fatal device error.
pub const FATAL_EXIT_CODE: i32 = 70;

/// The circuit breaker's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Failed steps in a row that open the breaker (at least 1).
    pub threshold: u32,
    /// How long it stays open before a probe request is let in.
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            threshold: 5,
            cooldown: Duration::from_secs(10),
        }
    }
}

/// The breaker's state, as the `kr_circuit_breaker_state` gauge reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

#[derive(Debug)]
struct BreakerInner {
    state: BreakerState,
    failures_in_a_row: u32,
    /// When it last opened, or when the last probe was let in.
    since: Instant,
}

/// The circuit breaker of one engine, shared by the engine loop (which reports steps) and
/// its handles (which ask before submitting).
#[derive(Debug)]
pub struct Breaker {
    cfg: BreakerConfig,
    inner: Mutex<BreakerInner>,
}

impl Breaker {
    pub fn new(cfg: BreakerConfig) -> Self {
        Self {
            cfg: BreakerConfig {
                threshold: cfg.threshold.max(1),
                ..cfg
            },
            inner: Mutex::new(BreakerInner {
                state: BreakerState::Closed,
                failures_in_a_row: 0,
                since: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn state(&self) -> BreakerState {
        self.lock().state
    }

    /// Whether a new request may start now; `Err(retry_after)` while open (or while a
    /// probe is out). The first request after the cooldown is the probe.
    pub fn admit(&self) -> Result<(), Duration> {
        let mut b = self.lock();
        let waited = b.since.elapsed();
        match b.state {
            BreakerState::Closed => Ok(()),
            _ if waited >= self.cfg.cooldown => {
                // Open past its cooldown, or a probe that never ran a step: let one in.
                b.state = BreakerState::HalfOpen;
                b.since = Instant::now();
                Ok(())
            }
            _ => Err(self.cfg.cooldown - waited),
        }
    }

    /// A step ran: the failure streak ends and a half-open breaker closes.
    pub fn step_succeeded(&self) {
        let mut b = self.lock();
        b.failures_in_a_row = 0;
        b.state = BreakerState::Closed;
    }

    /// A step failed: the breaker opens at the threshold, or at once when half-open.
    pub fn step_failed(&self) {
        let mut b = self.lock();
        b.failures_in_a_row += 1;
        let probe_failed = b.state == BreakerState::HalfOpen;
        if probe_failed || b.failures_in_a_row >= self.cfg.threshold {
            if b.state != BreakerState::Open {
                tracing::error!(
                    failed_steps = b.failures_in_a_row,
                    "circuit breaker open: refusing new requests for {:?}",
                    self.cfg.cooldown
                );
            }
            b.state = BreakerState::Open;
            b.since = Instant::now();
        }
    }
}

/// What a test's fault hook makes a step do (see [`FaultHook`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The step panics before the model runs.
    Panic(String),
    /// The step fails as a device error would.
    Error(String),
}

/// Decides, before each step runs, whether it fails (tests only: the call is compiled in
/// with the `fault-injection` feature; without it the hook is never called).
#[derive(Clone)]
pub struct FaultHook(pub Arc<dyn Fn(&StepPlan) -> Option<Fault> + Send + Sync>);

impl std::fmt::Debug for FaultHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FaultHook")
    }
}

/// A request as it was first queued, kept until it has been retried once.
pub(crate) type Retry = Option<NewRequest>;

/// The message of a caught panic.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

impl EngineLoop {
    /// Runs one step; a panic inside it fails the step's requests and restarts the loop.
    pub(super) fn supervised_step(&mut self, admit: bool) {
        self.in_step.clear();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.step(admit)));
        if let Err(payload) = outcome {
            let cause = format!("the engine panicked: {}", panic_message(payload.as_ref()));
            tracing::error!("{cause}; restarting the engine loop");
            self.stats.restarts.fetch_add(1, Relaxed);
            self.runner.drop_in_flight();
            let ids = std::mem::take(&mut self.in_step);
            self.fail_requests(&ids, &cause);
            self.publish_gauges();
        }
    }

    /// The fault the test hook picks for `plan` (never, without `fault-injection`).
    pub(super) fn injected_fault(&self, _plan: &StepPlan) -> Option<EngineError> {
        #[cfg(feature = "fault-injection")]
        if let Some(hook) = &self.fault_hook {
            match (hook.0)(_plan) {
                Some(Fault::Panic(why)) => panic!("{why}"),
                Some(Fault::Error(why)) => return Some(EngineError::Failed(why)),
                None => {}
            }
        }
        None
    }

    /// Ends or retries the requests `ids` of a failed step (see the module header), and
    /// counts the failure; a fatal device error exits the process.
    pub(super) fn fail_requests(&mut self, ids: &[RequestId], cause: &str) {
        self.stats.step_failures.fetch_add(1, Relaxed);
        self.breaker.step_failed();
        self.publish_breaker();
        for &id in ids {
            self.sched.finish(id);
            let Some(live) = self.live.get_mut(&id) else {
                continue;
            };
            if self.retrying == Some(id) {
                self.retrying = None;
            }
            let untouched = live.ids.len() == live.prompt_len;
            if let Some(req) = live.retry.take().filter(|_| untouched) {
                live.restart();
                self.held_retries.push_back(req);
                continue;
            }
            let _ = live.events.send(Event::Error(cause.to_string()));
            self.live.remove(&id);
        }
    }

    /// Queues the next held retry once the one before has run a step (or is gone).
    pub(super) fn release_retry(&mut self) {
        if self.retrying.is_some_and(|id| self.live.contains_key(&id)) {
            return;
        }
        self.retrying = None;
        while let Some(req) = self.held_retries.pop_front() {
            let id = req.id;
            let Some(live) = self.live.get_mut(&id) else {
                continue; // aborted while held
            };
            let again = NewRequest {
                arrival: self.admission.now(),
                ..req
            };
            if let Err(e) = self.sched.add(again) {
                let _ = live.events.send(Event::Error(e.to_string()));
                self.live.remove(&id);
                continue;
            }
            self.stats.retries.fetch_add(1, Relaxed);
            self.retrying = Some(id);
            return;
        }
    }

    /// A step ran: a retried request in it no longer holds the others back.
    pub(super) fn step_ran(&mut self, plan: &StepPlan) {
        if self
            .retrying
            .is_some_and(|id| plan.seqs.iter().any(|s| s.id == id))
        {
            self.retrying = None;
        }
    }

    /// A step's device error: fatal ones exit the process (see the module header).
    pub(super) fn check_fatal(&self, error: &EngineError) {
        if error.is_fatal_device_error() && self.exit_on_fatal {
            tracing::error!(
                "fatal GPU error, the device context is lost: {error}; exiting with status \
                 {FATAL_EXIT_CODE} so that the process is restarted"
            );
            std::process::exit(FATAL_EXIT_CODE);
        }
    }

    /// Mirrors the breaker's state in the stats (the metrics gauge, /ready).
    pub(super) fn publish_breaker(&self) {
        let state = self.breaker.state() as u64;
        self.stats.breaker_state.store(state, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32, cooldown_ms: u64) -> Breaker {
        Breaker::new(BreakerConfig {
            threshold,
            cooldown: Duration::from_millis(cooldown_ms),
        })
    }

    #[test]
    fn opens_after_threshold_failures_in_a_row() {
        let b = breaker(3, 10_000);
        b.step_failed();
        b.step_failed();
        b.step_succeeded();
        b.step_failed();
        b.step_failed();
        assert_eq!(b.state(), BreakerState::Closed);
        b.step_failed();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.admit().is_err());
    }

    #[test]
    fn half_open_probe_closes_or_reopens() {
        let b = breaker(1, 0);
        b.step_failed();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.admit().is_ok());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.step_failed();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.admit().is_ok());
        b.step_succeeded();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn a_probe_is_alone_until_the_cooldown_passes() {
        let b = breaker(1, 60_000);
        b.step_failed();
        let wait = b.admit().unwrap_err();
        assert!(wait <= Duration::from_secs(60) && wait > Duration::from_secs(59));
    }

    #[test]
    fn panic_messages_are_read() {
        let p = std::panic::catch_unwind(|| panic!("boom {}", 1)).unwrap_err();
        assert_eq!(panic_message(p.as_ref()), "boom 1");
    }
}
