//! Scheduler statistics: `GET /v1/scheduler/stats` as JSON and the matching
//! `kr_scheduler_*` / `kr_batch_size` series of /metrics. Everything is read from the
//! engine's lock-free stats at request time; the settings come from the effective config.

use crate::config::Config;
use crate::state::Server;
use axum::extract::State;
use axum::Json;
use kr_engine::{EngineStats, Priority, SchedStats, WindowLevel};
use serde_json::{json, Value};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// GET /v1/scheduler/stats, of the first configured model that is loaded.
pub async fn stats(State(server): State<Server>) -> Json<Value> {
    let cfg = server.effective().config;
    Json(server.pool.first_loaded().map_or_else(
        || json!({"loaded": false}),
        |(spec, e)| {
            let mut v = to_json(e.stats(), &cfg);
            v["model"] = json!(spec.name);
            v
        },
    ))
}

/// The JSON body: policy settings next to what the engine measured.
pub fn to_json(engine: &EngineStats, cfg: &Config) -> Value {
    engine.scheduler_json(&cfg.policy())
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Relaxed)
}

fn family(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// One labelled counter family: `name{label="value"} n` per pair.
fn labelled(out: &mut String, name: &str, help: &str, label: &str, rows: &[(&str, u64)]) {
    family(out, name, help, "counter");
    for (value, n) in rows {
        let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {n}");
    }
}

/// Appends the scheduler series to a Prometheus text page.
pub fn render(out: &mut String, engine: &EngineStats) {
    let q = &engine.sched;
    let scalars = [
        (
            "kr_scheduler_window_seconds",
            "Admission window in force (0 = off).",
            "gauge",
            load(&q.window_ns) as f64 * 1e-9,
        ),
        (
            "kr_scheduler_window_holds_total",
            "Engine turns in which the window held new requests.",
            "counter",
            load(&q.window_holds) as f64,
        ),
        (
            "kr_scheduler_queue_depth_ema",
            "EMA of the queue depth seen by the adaptive window.",
            "gauge",
            load(&q.queue_depth_ema_milli) as f64 / 1000.0,
        ),
        (
            "kr_scheduler_max_batch",
            "Running sequences allowed now (latency controller or max_running).",
            "gauge",
            load(&q.max_batch) as f64,
        ),
        (
            "kr_scheduler_step_ema_seconds",
            "EMA of the step time seen by the latency controller.",
            "gauge",
            load(&q.step_ema_ns) as f64 * 1e-9,
        ),
    ];
    for (name, help, kind, v) in scalars {
        family(out, name, help, kind);
        let _ = writeln!(out, "{name} {v}");
    }
    let windows: Vec<_> = WindowLevel::ALL
        .iter()
        .map(|&l| (l.name(), load(&q.window_transitions[l as usize])))
        .collect();
    labelled(
        out,
        "kr_scheduler_window_transitions_total",
        "Moves of the adaptive admission window, by the window moved to.",
        "window",
        &windows,
    );
    let adjustments = [
        ("degrade", load(&q.latency_degrades)),
        ("recover", load(&q.latency_recoveries)),
    ];
    labelled(
        out,
        "kr_scheduler_latency_adjustments_total",
        "Changes of the max batch by the latency controller.",
        "direction",
        &adjustments,
    );
    let prios: Vec<_> = Priority::ALL
        .iter()
        .map(|&p| (p.name(), load(&q.requests_by_priority[p as usize])))
        .collect();
    labelled(
        out,
        "kr_scheduler_requests_total",
        "Requests accepted by the engine, by priority.",
        "priority",
        &prios,
    );
    render_batch(out, q);
}

fn render_batch(out: &mut String, q: &SchedStats) {
    let batch = q.batch_size.snapshot();
    family(
        out,
        "kr_batch_size",
        "Sequences in one engine step.",
        "histogram",
    );
    let mut cumulative = 0;
    for (le, c) in batch.bounds.iter().zip(&batch.counts) {
        cumulative += c;
        let _ = writeln!(out, "kr_batch_size_bucket{{le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(out, "kr_batch_size_bucket{{le=\"+Inf\"}} {}", batch.count);
    let _ = writeln!(
        out,
        "kr_batch_size_sum {}\nkr_batch_size_count {}",
        batch.sum_seconds, batch.count
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_scheduler_series() {
        let e = EngineStats::default();
        e.sched.batch_size.observe(3);
        e.sched.batch_size.observe(40);
        e.sched.window_transitions[WindowLevel::High as usize].fetch_add(2, Relaxed);
        e.sched.window_ns.store(750_000, Relaxed);
        let mut page = String::new();
        render(&mut page, &e);
        assert!(
            page.contains("kr_scheduler_window_seconds 0.00075\n"),
            "{page}"
        );
        assert!(page.contains("kr_scheduler_window_transitions_total{window=\"high\"} 2\n"));
        assert!(page.contains("kr_batch_size_bucket{le=\"2\"} 0\n"));
        assert!(page.contains("kr_batch_size_bucket{le=\"4\"} 1\n"));
        assert!(page.contains("kr_batch_size_bucket{le=\"64\"} 2\n"));
        assert!(page.contains("kr_batch_size_sum 43\n"));
        let json = to_json(&e, &Config::default());
        assert_eq!(json["window"]["transitions"]["high"], 2);
        assert_eq!(json["window"]["mode"], "off");
        assert_eq!(json["batch_size"]["steps"], 2);
    }
}
