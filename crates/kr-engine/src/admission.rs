//! The engine's side of the scheduler policies: owns the pure
//! [`kr_core::policy::Policies`] and the engine's clock, feeds them queue depths and step
//! times, applies their decisions to the [`Scheduler`] and publishes them in [`SchedStats`].
//!
//! Invariants: the clock is read here and only passed down as a `Duration` since the
//! engine started; the scheduler's running cap always equals [`Policies::max_running`]
//! of the engine's `max_num_seqs`; the stats mirror the policies after every change.

use crate::stats::SchedStats;
use kr_core::policy::{Gate, Policies, PolicyConfig, QueueView};
use kr_core::Scheduler;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

pub(crate) struct AdmissionPolicies {
    policies: Policies,
    epoch: Instant,
    /// The engine's `max_num_seqs`: the latency controller never goes above it.
    hard_cap: usize,
}

impl AdmissionPolicies {
    pub fn new(cfg: PolicyConfig, sched: &mut Scheduler, stats: &SchedStats) -> Self {
        let mut a = Self {
            policies: Policies::new(PolicyConfig::default()),
            epoch: Instant::now(),
            hard_cap: sched.config().max_num_seqs,
        };
        a.set(cfg, sched, stats);
        a
    }

    /// Time since the engine started: the clock the pure policies and the scheduler see.
    pub fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    pub fn fast_path(&self) -> bool {
        self.policies.fast_path()
    }

    /// Puts a new policy config in force (live change); state starts afresh.
    pub fn set(&mut self, cfg: PolicyConfig, sched: &mut Scheduler, stats: &SchedStats) {
        sched.set_aging(cfg.aging_step);
        self.policies = Policies::new(cfg);
        sched.set_max_running(self.policies.max_running(self.hard_cap));
        stats.max_batch.store(sched.max_running() as u64, Relaxed);
        self.publish_window(stats);
    }

    fn publish_window(&self, stats: &SchedStats) {
        let w = self.policies.window().as_nanos() as u64;
        stats.window_ns.store(w, Relaxed);
        if let Some(a) = self.policies.adaptive() {
            let ema = (a.ema() * 1000.0) as u64;
            stats.queue_depth_ema_milli.store(ema, Relaxed);
        }
    }

    /// Once per engine turn: samples the queue depth for the adaptive window (S3).
    pub fn observe_turn(&mut self, sched: &Scheduler, stats: &SchedStats) {
        if self.policies.adaptive().is_none() {
            return;
        }
        if let Some(t) = self.policies.observe_queue(sched.num_waiting()) {
            stats.window_transitions[t.to as usize].fetch_add(1, Relaxed);
            tracing::debug!(
                from = t.from.name(),
                to = t.to.name(),
                "admission window moved"
            );
        }
        self.publish_window(stats);
    }

    /// The admission window's decision for the queues as they are now (S2, S5).
    pub fn gate(&self, sched: &Scheduler) -> Gate {
        // No window (the default): skip the scans of the waiting queue below.
        if self.policies.window().is_zero() {
            return Gate::Admit;
        }
        self.policies.gate(&QueueView {
            now: self.now(),
            oldest_waiting: sched.oldest_waiting_arrival(),
            urgent_waiting: sched.urgent_waiting(),
            waiting: sched.num_waiting(),
            running: sched.num_running(),
            max_running: sched.max_running(),
        })
    }

    /// After each step: feeds the latency controller (S4) and applies its new cap.
    pub fn after_step(&mut self, step: Duration, sched: &mut Scheduler, stats: &SchedStats) {
        let Some(adj) = self.policies.observe_step(step) else {
            if let Some(l) = self.policies.latency() {
                stats.step_ema_ns.store(l.ema().as_nanos() as u64, Relaxed);
            }
            return;
        };
        sched.set_max_running(self.policies.max_running(self.hard_cap));
        stats.max_batch.store(sched.max_running() as u64, Relaxed);
        let counter = if adj.to < adj.from {
            &stats.latency_degrades
        } else {
            &stats.latency_recoveries
        };
        counter.fetch_add(1, Relaxed);
        tracing::debug!(
            from = adj.from,
            to = adj.to,
            "latency controller moved the max batch"
        );
    }
}
