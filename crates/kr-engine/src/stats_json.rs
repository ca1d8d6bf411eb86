//! The scheduler statistics as one JSON document — the body of `GET /v1/scheduler/stats`
//! and of the Node package's `getSchedulerStats()` — read from the engine's lock-free
//! counters at call time, next to the policy settings in force. Key names follow the
//! system kr-serve reimplements (`fast_path.executions`, `fast_path.fast_path_rate`,
//! `window.transitions`), so its dashboards and tests read them unchanged.

use crate::stats::{EngineStats, SchedStats};
use kr_core::policy::WindowLevel;
use kr_core::{PolicyConfig, Priority};
use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Relaxed)
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl EngineStats {
    /// The scheduler statistics with the settings of `policy` (see the module header).
    pub fn scheduler_json(&self, policy: &PolicyConfig) -> Value {
        let s = self.snapshot();
        let q = &self.sched;
        let started = self.queue_seconds.snapshot().count;
        let by_prio: Map<String, Value> = Priority::ALL
            .iter()
            .map(|&p| {
                (
                    p.name().into(),
                    json!(load(&q.requests_by_priority[p as usize])),
                )
            })
            .collect();
        let fast_path_rate = ratio(s.fast_path, started);
        json!({
            "fast_path": {
                "enabled": policy.fast_path,
                "executions": s.fast_path,
                "requests_started": started,
                "rate": fast_path_rate,
                "fast_path_rate": fast_path_rate,
            },
            "window": window_json(q, policy),
            "batch_size": batch_json(q),
            "queue": {"waiting": s.waiting, "running": s.running},
            "step_time_ms": q.step_times.percentiles(),
            "preemptions": s.preemptions,
            "steps": s.steps,
            "latency_controller": {
                "enabled": policy.latency.is_some(),
                "max_batch": load(&q.max_batch),
                "p99_target_ms": policy.latency.as_ref().map(|l| ms(l.target)),
                "step_ema_ms": load(&q.step_ema_ns) as f64 * 1e-6,
                "degrades": load(&q.latency_degrades),
                "recoveries": load(&q.latency_recoveries),
            },
            "requests_by_priority": by_prio,
        })
    }
}

fn window_json(q: &SchedStats, policy: &PolicyConfig) -> Value {
    let transitions: Map<String, Value> = WindowLevel::ALL
        .iter()
        .map(|&l| {
            (
                l.name().into(),
                json!(load(&q.window_transitions[l as usize])),
            )
        })
        .collect();
    let total: u64 = q.window_transitions.iter().map(load).sum();
    let mode = match (policy.adaptive.is_some(), !policy.window.is_zero()) {
        (true, _) => "adaptive",
        (false, true) => "fixed",
        (false, false) => "off",
    };
    json!({
        "mode": mode,
        "current_ms": load(&q.window_ns) as f64 * 1e-6,
        "queue_depth_ema": load(&q.queue_depth_ema_milli) as f64 / 1000.0,
        "transitions": transitions,
        "transitions_total": total,
        "holds": load(&q.window_holds),
    })
}

fn batch_json(q: &SchedStats) -> Value {
    let batch = q.batch_size.snapshot();
    let last = batch.counts.last().copied().unwrap_or(0);
    let buckets: Vec<Value> = batch
        .bounds
        .iter()
        .zip(&batch.counts)
        .map(|(le, n)| json!({"le": le, "count": n}))
        .chain(std::iter::once(json!({"le": "+Inf", "count": last})))
        .collect();
    json!({
        "buckets": buckets,
        "steps": batch.count,
        "mean": ratio(batch.sum_seconds as u64, batch.count),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_window_mode_and_counts_transitions() {
        let e = EngineStats::default();
        e.sched.batch_size.observe(3);
        e.sched.batch_size.observe(40);
        e.sched.window_transitions[WindowLevel::High as usize].fetch_add(2, Relaxed);
        let json = e.scheduler_json(&PolicyConfig::default());
        assert_eq!(json["window"]["transitions"]["high"], 2);
        assert_eq!(json["window"]["mode"], "off");
        assert_eq!(json["batch_size"]["steps"], 2);
        assert_eq!(json["latency_controller"]["p99_target_ms"], Value::Null);
        let fixed = PolicyConfig {
            window: std::time::Duration::from_millis(2),
            ..PolicyConfig::default()
        };
        assert_eq!(e.scheduler_json(&fixed)["window"]["mode"], "fixed");
    }
}
