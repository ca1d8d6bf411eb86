//! Overlapped decode steps: while the GPU runs step N, the engine plans step N+1
//! ([`kr_core::Scheduler::schedule_ahead`]), launches it with its input ids fed on the device
//! from step N's tokens, and only then waits for step N's tokens and emits them. The GPU
//! never waits for the host between such steps.
//!
//! Invariants:
//! - at most two steps are in flight, and they complete (scheduler update, events) in
//!   launch order;
//! - a step goes ahead only while the inbox is empty: a command ends the run once the step in
//!   flight completes (it waits in `deferred`), so an arrival or an abort waits one step at
//!   most;
//! - a request that ends with step N's token (stop token, stop string, abort) still has its
//!   row of step N+1 computed; that token is dropped (its scheduler entry is gone). Its KV
//!   write lands in a block it no longer owns, but in stream order before any later step
//!   that could reuse the block.

use super::EngineLoop;
use crate::batch::RowUse;
use kr_core::StepPlan;
use kr_model::{AttnMeta, RowSampling};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::TryRecvError;
use std::time::Instant;

/// A step on the device whose tokens the host has not read.
struct InFlight {
    plan: StepPlan,
    rows: Vec<RowUse>,
    launched: Instant,
}

impl EngineLoop {
    /// Runs `plan` (already batched, every row sampled on the device) and as many steps
    /// after it as can go ahead, each launched before the one before it completes.
    pub(super) fn run_overlapped(
        &mut self,
        plan: StepPlan,
        rows: Vec<RowUse>,
        ids: &[u32],
        meta: &AttnMeta,
        draws: &[RowSampling],
        t0: Instant,
    ) {
        if let Err(e) = self.runner.launch_sampled(ids, meta, draws, false) {
            return self.fail_step(&plan, &e);
        }
        let mut current = InFlight {
            plan,
            rows,
            launched: t0,
        };
        let mut previous_done = t0;
        loop {
            let next = self.launch_ahead(&current.plan);
            let tokens = match self.runner.collect_sampled() {
                Ok(t) => t,
                Err(e) => {
                    self.fail_step(&current.plan, &e);
                    if let Some(n) = next {
                        let _ = self.runner.collect_sampled();
                        self.fail_step(&n.plan, &e);
                    }
                    return;
                }
            };
            let (sampled, logprobs) =
                self.record_device_tokens(&current.plan, &current.rows, tokens);
            // A step's time runs from when the GPU could start it: its launch, or the end
            // of the step before when it was launched ahead.
            let started = current.launched.max(previous_done);
            self.complete_step(&current.plan, &sampled, logprobs, started);
            previous_done = Instant::now();
            self.publish_gauges();
            match next {
                Some(n) => current = n,
                None => return,
            }
        }
    }

    /// Plans and launches the continuation of `in_flight`, its ids fed from `in_flight`'s
    /// tokens on the device; `None` (nothing launched) when a command is waiting or the
    /// next step is not a plain continuation (see `schedule_ahead`).
    fn launch_ahead(&mut self, in_flight: &StepPlan) -> Option<InFlight> {
        if self.deferred.is_some() {
            return None;
        }
        match self.inbox.try_recv() {
            Ok(cmd) => {
                self.deferred = Some(cmd);
                return None;
            }
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => {}
        }
        let plan = self.sched.schedule_ahead(in_flight)?;
        let launched = Instant::now();
        let (ids, meta, rows) = self.batch(&plan);
        // There unless a request holds a grammar: the rows are decode rows of requests that
        // sampled on the device.
        let seqs = self.device_rows(&plan, &rows, true)?;
        let draws = super::device_rows::draw(&mut self.live, &seqs, self.vocab_size);
        match self.runner.launch_sampled(&ids, &meta, &draws, true) {
            Ok(()) => {
                self.stats.overlapped_steps.fetch_add(1, Relaxed);
                Some(InFlight {
                    plan,
                    rows,
                    launched,
                })
            }
            Err(e) => {
                // The requests stay scheduled: the next normal step plans the same tokens
                // and reports the failure if it persists. (Their samplers have drawn this
                // step's uniform numbers: a seeded request's later draws shift by one.)
                tracing::warn!("an overlapped step could not start: {e}");
                None
            }
        }
    }
}
