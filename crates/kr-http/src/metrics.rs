//! Prometheus text exposition, written by hand: engine counters and gauges come
//! from an [`kr_engine::EngineStats`] snapshot at scrape time; request latencies (TTFT,
//! inter-token, end-to-end) are measured here, in the server, as clients see them.

use crate::tokenize::TokenizeCounters;
use kr_engine::{
    EngineHandle, EngineStats, Histogram, HistogramSnapshot, ModelPool, ModelStatus, StatsSnapshot,
};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// How a request ended, as counted in `kr_requests_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Stop,
    Length,
    Cancelled,
    Error,
    Rejected,
}

impl Outcome {
    const ALL: [Outcome; 5] = [
        Outcome::Stop,
        Outcome::Length,
        Outcome::Cancelled,
        Outcome::Error,
        Outcome::Rejected,
    ];
    fn label(self) -> &'static str {
        match self {
            Outcome::Stop => "stop",
            Outcome::Length => "length",
            Outcome::Cancelled => "cancelled",
            Outcome::Error => "error",
            Outcome::Rejected => "rejected",
        }
    }
}

/// Metrics measured by the server.
#[derive(Debug, Default)]
pub struct Metrics {
    pub ttft: Histogram,
    pub inter_token: Histogram,
    pub e2e: Histogram,
    outcomes: [AtomicU64; 5],
    /// Shared with the tokenize batcher's worker.
    pub tokenize: Arc<TokenizeCounters>,
}

impl Metrics {
    pub fn count(&self, o: Outcome) {
        self.outcomes[o as usize].fetch_add(1, Relaxed);
    }

    /// Renders every series in the Prometheus text format: the engine series summed over
    /// `engines` (the loaded models), their histograms and scheduler series of the first.
    pub fn render(&self, engines: &[&EngineStats], in_flight: usize) -> String {
        let mut s = StatsSnapshot::default();
        for e in engines {
            s.add(&e.snapshot());
        }
        let idle = EngineStats::default();
        let engine = engines.first().copied().unwrap_or(&idle);
        let mut out = String::with_capacity(8192);
        out.push_str("# HELP kr_requests_total Requests by how they ended.\n");
        out.push_str("# TYPE kr_requests_total counter\n");
        for o in Outcome::ALL {
            let v = self.outcomes[o as usize].load(Relaxed);
            let _ = writeln!(out, "kr_requests_total{{outcome=\"{}\"}} {v}", o.label());
        }
        let gauges = [
            (
                "kr_requests_running",
                "Requests in the running batch.",
                s.running,
            ),
            (
                "kr_requests_waiting",
                "Requests waiting to be scheduled.",
                s.waiting,
            ),
            (
                "kr_kv_blocks_used",
                "KV cache blocks in use.",
                s.kv_blocks_used,
            ),
            (
                "kr_kv_blocks_total",
                "KV cache blocks in the pool.",
                s.kv_blocks_total,
            ),
            (
                "kr_http_requests_in_flight",
                "Engine requests admitted by the server and not yet ended.",
                in_flight as u64,
            ),
            (
                "kr_circuit_breaker_state",
                "The engine's circuit breaker: 0 closed, 1 open, 2 half-open.",
                s.breaker_state,
            ),
        ];
        for (name, help, v) in gauges {
            scalar(&mut out, name, help, "gauge", v);
        }
        let counters = [
            (
                "kr_prompt_tokens_total",
                "Prompt tokens received.",
                s.prompt_tokens,
            ),
            (
                "kr_generation_tokens_total",
                "Tokens generated.",
                s.generation_tokens,
            ),
            (
                "kr_device_sampled_tokens_total",
                "Tokens sampled on the GPU (only their ids crossed PCIe).",
                s.device_sampled_tokens,
            ),
            (
                "kr_overlapped_steps_total",
                "Steps launched while the step before still ran on the GPU.",
                s.overlapped_steps,
            ),
            (
                "kr_preemptions_total",
                "Requests preempted (recomputed later).",
                s.preemptions,
            ),
            (
                "kr_prefix_cache_queries_total",
                "Prompt tokens looked up in the prefix cache.",
                s.prefix_query_tokens,
            ),
            (
                "kr_prefix_cache_hits_total",
                "Prompt tokens found in the prefix cache.",
                s.prefix_hit_tokens,
            ),
            (
                "kr_fast_path_total",
                "Requests started at once by an idle engine.",
                s.fast_path,
            ),
            ("kr_engine_steps_total", "Engine steps run.", s.steps),
            (
                "kr_engine_step_failures_total",
                "Engine steps that failed (a device error or a panic).",
                s.step_failures,
            ),
            (
                "kr_engine_restarts_total",
                "Engine-loop restarts after a panic in a step.",
                s.restarts,
            ),
            (
                "kr_engine_retries_total",
                "Requests queued again after a failed step, before their first token.",
                s.retries,
            ),
            (
                "kr_tokenize_batches_total",
                "Batch encodes run by the tokenize batcher.",
                self.tokenize.batches.load(Relaxed),
            ),
            (
                "kr_tokenize_requests_total",
                "Prompts tokenised by the tokenize batcher (over all its batches).",
                self.tokenize.requests.load(Relaxed),
            ),
        ];
        for (name, help, v) in counters {
            scalar(&mut out, name, help, "counter", v);
        }
        let histograms = [
            (
                "kr_time_to_first_token_seconds",
                "Time from request arrival to the first token.",
                self.ttft.snapshot(),
            ),
            (
                "kr_inter_token_latency_seconds",
                "Time between consecutive tokens of a request.",
                self.inter_token.snapshot(),
            ),
            (
                "kr_e2e_request_latency_seconds",
                "Time from request arrival to its last token.",
                self.e2e.snapshot(),
            ),
            (
                "kr_queue_time_seconds",
                "Time a request waited in the engine before its first step.",
                engine.queue_seconds.snapshot(),
            ),
            (
                "kr_step_duration_seconds",
                "Wall time of one engine step.",
                engine.step_seconds.snapshot(),
            ),
        ];
        for (name, help, h) in histograms {
            histogram(&mut out, name, help, &h);
        }
        crate::sched_stats::render(&mut out, engine);
        out
    }
}

/// The gauges an inference gateway's endpoint picker reads, under vLLM's names (Gateway API
/// Inference Extension: queue length, KV-cache usage as a fraction, running requests).
pub fn vllm_aliases(out: &mut String, model: &str, s: &kr_engine::StatsSnapshot) {
    let kv = s.kv_blocks_used as f64 / s.kv_blocks_total.max(1) as f64;
    let label = label(model);
    let series = [
        (
            "vllm:num_requests_waiting",
            "Requests waiting to be scheduled.",
            s.waiting as f64,
        ),
        (
            "vllm:num_requests_running",
            "Requests in the running batch.",
            s.running as f64,
        ),
        ("vllm:gpu_cache_usage_perc", "KV-cache usage, 0 to 1.", kv),
        ("vllm:kv_cache_usage_perc", "KV-cache usage, 0 to 1.", kv),
    ];
    for (name, help, v) in series {
        let _ = writeln!(out, "# HELP {name} {help} (alias of a kr_ gauge)");
        let _ = writeln!(out, "# TYPE {name} gauge");
        let _ = writeln!(out, "{name}{{model_name=\"{label}\"}} {v}");
    }
}

/// Per-model series: loaded or not, memory, requests in flight; loads and evictions; and
/// the main engine series of each loaded model.
pub fn models(out: &mut String, pool: &ModelPool, loaded: &[(String, EngineHandle)]) {
    let status = pool.status();
    let series: [(&str, &str, fn(&ModelStatus) -> u64); 3] = [
        ("kr_model_loaded", "1 while the model is loaded.", |m| {
            m.loaded as u64
        }),
        (
            "kr_model_memory_bytes",
            "Memory the model holds (weights and KV cache; the estimate while not loaded).",
            |m| m.bytes,
        ),
        (
            "kr_model_requests_active",
            "Requests in flight on the model.",
            |m| m.active as u64,
        ),
    ];
    for (name, help, value) in series {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for m in &status {
            let _ = writeln!(out, "{name}{{model=\"{}\"}} {}", label(&m.name), value(m));
        }
    }
    engine_series_by_model(out, loaded);
    let (loads, evictions) = pool.counters();
    counter(
        out,
        "kr_model_loads_total",
        "Models loaded since start.",
        loads,
    );
    let help = "Idle models unloaded to make room for another.";
    counter(out, "kr_model_evictions_total", help, evictions);
    let help = "The memory budget of the models.";
    scalar(
        out,
        "kr_model_memory_budget_bytes",
        help,
        "gauge",
        pool.budget(),
    );
}

/// The main engine series, labelled by model (a model's counters start again when it is
/// loaded again).
fn engine_series_by_model(out: &mut String, loaded: &[(String, EngineHandle)]) {
    type Read = fn(&StatsSnapshot) -> u64;
    let series: [(&str, &str, &str, Read); 6] = [
        (
            "kr_model_kv_blocks_used",
            "KV blocks in use.",
            "gauge",
            |s| s.kv_blocks_used,
        ),
        (
            "kr_model_requests_running",
            "Requests in the running batch.",
            "gauge",
            |s| s.running,
        ),
        (
            "kr_model_requests_waiting",
            "Requests waiting to be scheduled.",
            "gauge",
            |s| s.waiting,
        ),
        (
            "kr_model_prompt_tokens_total",
            "Prompt tokens received.",
            "counter",
            |s| s.prompt_tokens,
        ),
        (
            "kr_model_generation_tokens_total",
            "Tokens generated.",
            "counter",
            |s| s.generation_tokens,
        ),
        (
            "kr_model_engine_steps_total",
            "Engine steps run.",
            "counter",
            |s| s.steps,
        ),
    ];
    let snaps: Vec<(&String, StatsSnapshot)> = loaded
        .iter()
        .map(|(n, e)| (n, e.stats().snapshot()))
        .collect();
    for (name, help, kind, value) in series {
        let _ = writeln!(out, "# HELP {name} {help} Per loaded model.");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (model, s) in &snaps {
            let _ = writeln!(out, "{name}{{model=\"{}\"}} {}", label(model), value(s));
        }
    }
}

/// A Prometheus label value, escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"")
}

/// One unlabelled counter in the Prometheus text format.
pub fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    scalar(out, name, help, "counter", v);
}

fn scalar(out: &mut String, name: &str, help: &str, kind: &str, v: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
    );
}

fn histogram(out: &mut String, name: &str, help: &str, h: &HistogramSnapshot) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    let mut cumulative = 0;
    for (bound, c) in h.bounds.iter().zip(&h.counts) {
        cumulative += c;
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(
        out,
        "{name}_sum {}\n{name}_count {}",
        h.sum_seconds, h.count
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn renders_counters_gauges_and_cumulative_buckets() {
        let m = Metrics::default();
        m.count(Outcome::Stop);
        m.ttft.observe(Duration::from_millis(3));
        m.ttft.observe(Duration::from_millis(30));
        let text = m.render(&[&EngineStats::default()], 2);
        assert!(text.contains("kr_requests_total{outcome=\"stop\"} 1\n"));
        assert!(text.contains("kr_http_requests_in_flight 2\n"));
        assert!(text.contains("kr_time_to_first_token_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("kr_time_to_first_token_seconds_bucket{le=\"0.05\"} 2\n"));
        assert!(text.contains("kr_time_to_first_token_seconds_count 2\n"));
        assert!(text.contains("# TYPE kr_step_duration_seconds histogram\n"));
    }
}
