//! Text forms of a `bench serve` report: a one-line summary per level (stderr) and a
//! Markdown report written beside the JSON. Both are views of the JSON, which is the
//! record; nothing here measures.

use super::{emit_json, write_file};
use crate::error::Result;
use serde_json::Value;
use std::fmt::Write;
use std::path::Path;

fn f(v: &Value) -> String {
    v.as_f64().map_or("–".into(), |x| format!("{x:.2}"))
}

/// `concurrency 4: 32/32 ok in 12.3 s, 9.1 req/s, 310 tok/s, TTFT p50 … p99 …`.
pub fn level_line(l: &Value) -> String {
    format!(
        "concurrency {}: {}/{} ok in {:.1} s | {} req/s, {} output tok/s | TTFT p50 {} p99 {} ms | TPOT p50 {} p99 {} ms | E2E p50 {} p99 {} ms",
        l["concurrency"],
        l["completed"],
        l["completed"].as_u64().unwrap_or(0) + l["failed"].as_u64().unwrap_or(0),
        l["duration_s"].as_f64().unwrap_or(0.0),
        f(&l["request_throughput"]),
        f(&l["output_throughput"]),
        f(&l["ttft_ms"]["p50"]),
        f(&l["ttft_ms"]["p99"]),
        f(&l["tpot_ms"]["p50"]),
        f(&l["tpot_ms"]["p99"]),
        f(&l["e2e_ms"]["p50"]),
        f(&l["e2e_ms"]["p99"]),
    )
}

/// The Markdown report: settings, machine, then one table row per level and metric.
pub fn markdown(r: &Value) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# bench serve: {}\n", r["label"].as_str().unwrap_or(""));
    let _ = writeln!(
        s,
        "- URL: {} ({} endpoint), model `{}`",
        r["url"].as_str().unwrap_or(""),
        r["endpoint"].as_str().unwrap_or(""),
        r["model"].as_str().unwrap_or("")
    );
    let _ = writeln!(
        s,
        "- Machine: {}, {} cores; load average before {} after {}",
        r["machine"]["cpu"].as_str().unwrap_or("?"),
        r["machine"]["cores"],
        r["load_average_before"],
        r["load_average_after"]
    );
    let _ = writeln!(
        s,
        "- Commit: {}; command: `{}`",
        r["commit"].as_str().unwrap_or("?"),
        r["command"].as_str().unwrap_or("")
    );
    let _ = writeln!(s, "- Settings: `{}`\n", r["settings"]);
    let _ = writeln!(s, "| concurrency | ok / failed | req/s | output tok/s | goodput req/s | TTFT ms mean / p50 / p90 / p99 | TPOT ms mean / p50 / p90 / p99 | ITL ms mean / p50 / p90 / p99 | E2E ms mean / p50 / p90 / p99 |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    for l in r["levels"].as_array().into_iter().flatten() {
        let sum = |k: &str| {
            let m = &l[k];
            format!(
                "{} / {} / {} / {}",
                f(&m["mean"]),
                f(&m["p50"]),
                f(&m["p90"]),
                f(&m["p99"])
            )
        };
        let _ = writeln!(
            s,
            "| {} | {} / {} | {} | {} | {} | {} | {} | {} | {} |",
            l["concurrency"],
            l["completed"],
            l["failed"],
            f(&l["request_throughput"]),
            f(&l["output_throughput"]),
            f(&l["goodput"]),
            sum("ttft_ms"),
            sum("tpot_ms"),
            sum("itl_ms"),
            sum("e2e_ms")
        );
    }
    s
}

/// Writes the JSON to `out` and the Markdown beside it (`.md`); without `out`, prints
/// the JSON.
pub fn write_serve_outputs(report: &Value, out: Option<&Path>) -> Result<()> {
    emit_json(report, out)?;
    if let Some(out) = out {
        let md = out.with_extension("md");
        write_file(&md, &markdown(report))?;
        eprintln!("wrote {} and {}", out.display(), md.display());
    }
    Ok(())
}
