//! `kr-serve bench compare OLD.json NEW.json --tolerance 5%`: the regression gate.
//!
//! Each report is flattened into named metrics that say which way is better (throughput
//! up, latency down). A metric regresses when NEW is worse than OLD by more than the
//! tolerance, as a ratio: `new < old·(1−t)` for higher-is-better, `new > old·(1+t)` for
//! lower-is-better. Works on `bench serve`, `bench overhead` and `bench engine` reports;
//! both must be of the same kind. Only metrics present in both are compared; a report
//! pair with none in common is an error, not a pass.

use crate::cli::BenchCompareArgs;
use crate::error::{CliError, Result};
use serde_json::Value;
use std::fmt::Write;

/// Which direction is an improvement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

/// One comparable number of a report.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub name: String,
    pub value: f64,
    pub better: Better,
}

/// `5%` → 0.05, `0.05` → 0.05; a bare number must be a fraction below 1.
pub fn parse_tolerance(s: &str) -> std::result::Result<f64, String> {
    let s = s.trim();
    let (num, pct) = match s.strip_suffix('%') {
        Some(n) => (n.trim(), true),
        None => (s, false),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("invalid tolerance `{s}`: write e.g. 5% or 0.05"))?;
    let v = if pct { v / 100.0 } else { v };
    if !(0.0..1.0).contains(&v) {
        return Err(format!(
            "invalid tolerance `{s}`: allowed 0% to below 100% (e.g. 5% or 0.05)"
        ));
    }
    Ok(v)
}

fn push(out: &mut Vec<Metric>, name: String, v: &Value, better: Better) {
    if let Some(value) = v.as_f64().filter(|x| x.is_finite()) {
        out.push(Metric {
            name,
            value,
            better,
        });
    }
}

/// The comparable metrics of a report, by its `benchmark` kind.
pub fn metrics(r: &Value) -> std::result::Result<(String, Vec<Metric>), String> {
    let kind = r["benchmark"]
        .as_str()
        .ok_or("not a kr-serve bench report (no `benchmark` field)")?;
    let mut m = Vec::new();
    match kind {
        "serve" => serve_metrics(r, &mut m),
        "overhead" => overhead_metrics(r, &mut m),
        "engine" => engine_metrics(r, &mut m),
        other => {
            return Err(format!(
                "unknown benchmark kind `{other}` (expected serve, overhead or engine)"
            ))
        }
    }
    Ok((kind.to_string(), m))
}

fn levels(r: &Value) -> impl Iterator<Item = &Value> {
    r["levels"].as_array().into_iter().flatten()
}

/// Per level (`c=4`, or `c=4,rate=2` under a request rate).
fn serve_metrics(r: &Value, m: &mut Vec<Metric>) {
    use Better::*;
    for l in levels(r) {
        let rate = l["request_rate"]
            .as_f64()
            .map_or(String::new(), |x| format!(",rate={x}"));
        let k = format!("c={}{rate}", l["concurrency"]);
        for key in [
            "completed",
            "output_throughput",
            "request_throughput",
            "goodput",
        ] {
            push(m, format!("{k} {key}"), &l[key], Higher);
        }
        for metric in ["ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"] {
            for p in ["p50", "p99"] {
                push(m, format!("{k} {metric}.{p}"), &l[metric][p], Lower);
            }
        }
    }
}

/// Per level: the HTTP/engine time ratio (1 + overhead) and each side's speed.
fn overhead_metrics(r: &Value, m: &mut Vec<Metric>) {
    use Better::*;
    for l in levels(r) {
        let k = format!("c={}", l["concurrency"]);
        let ratio = &l["http_over_engine_time_ratio"];
        push(m, format!("{k} http_over_engine_time_ratio"), ratio, Lower);
        for side in ["engine", "http"] {
            let s = &l[side];
            push(
                m,
                format!("{k} {side}.tokens_per_s"),
                &s["tokens_per_s"],
                Higher,
            );
            push(
                m,
                format!("{k} {side}.latency_ms.p50"),
                &s["latency_ms"]["p50"],
                Lower,
            );
            push(
                m,
                format!("{k} {side}.ttft_ms.p50"),
                &s["ttft_ms"]["p50"],
                Lower,
            );
        }
    }
}

fn engine_metrics(r: &Value, m: &mut Vec<Metric>) {
    use Better::*;
    let p = &r["prefill"];
    push(m, "prefill.tokens_per_s".into(), &p["tokens_per_s"], Higher);
    push(m, "prefill.ttft_ms".into(), &p["ttft_ms"], Lower);
    for d in r["decode"].as_array().into_iter().flatten() {
        let name = format!("batch={} decode_tokens_per_s", d["batch_size"]);
        push(m, name, &d["decode_tokens_per_s"], Higher);
    }
}

/// One compared metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub name: String,
    pub old: f64,
    pub new: f64,
    /// Relative change (new/old − 1); `None` when old is 0.
    pub change: Option<f64>,
    pub regressed: bool,
}

/// Compares two reports; `Err` when they cannot be compared.
pub fn compare(old: &Value, new: &Value, tolerance: f64) -> std::result::Result<Vec<Row>, String> {
    let (k_old, m_old) = metrics(old).map_err(|e| format!("OLD: {e}"))?;
    let (k_new, m_new) = metrics(new).map_err(|e| format!("NEW: {e}"))?;
    if k_old != k_new {
        return Err(format!(
            "cannot compare a `{k_old}` report with a `{k_new}` report"
        ));
    }
    let rows: Vec<Row> = m_old
        .iter()
        .filter_map(|o| {
            let n = m_new.iter().find(|n| n.name == o.name)?;
            let regressed = match o.better {
                Better::Higher => n.value < o.value * (1.0 - tolerance),
                Better::Lower => n.value > o.value * (1.0 + tolerance),
            };
            let change = (o.value != 0.0).then(|| n.value / o.value - 1.0);
            Some(Row {
                name: o.name.clone(),
                old: o.value,
                new: n.value,
                change,
                regressed,
            })
        })
        .collect();
    if rows.is_empty() {
        return Err(
            "the reports have no metric in common (different concurrency levels or batch sizes?)"
                .into(),
        );
    }
    Ok(rows)
}

/// The table `bench compare` prints.
pub fn table(rows: &[Row], tolerance: f64) -> String {
    let w = rows.iter().map(|r| r.name.len()).max().unwrap_or(6).max(6);
    let mut s = format!(
        "{:<w$}  {:>12}  {:>12}  {:>8}  status\n",
        "metric", "old", "new", "change"
    );
    for r in rows {
        let change = r
            .change
            .map_or("n/a".into(), |c| format!("{:+.1}%", c * 100.0));
        let status = if r.regressed { "REGRESSION" } else { "ok" };
        let _ = writeln!(
            s,
            "{:<w$}  {:>12.3}  {:>12.3}  {:>8}  {status}",
            r.name, r.old, r.new, change
        );
    }
    let n = rows.iter().filter(|r| r.regressed).count();
    let _ = writeln!(
        s,
        "{n} of {} metrics regressed beyond {:.1}%",
        rows.len(),
        tolerance * 100.0
    );
    s
}

fn load(path: &std::path::Path) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("cannot read report {}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| CliError::Usage(format!("report {} is not JSON: {e}", path.display())))
}

pub fn bench_compare(args: BenchCompareArgs) -> Result<()> {
    let tol = parse_tolerance(&args.tolerance).map_err(CliError::Usage)?;
    let (old, new) = (load(&args.old)?, load(&args.new)?);
    let rows = compare(&old, &new, tol).map_err(CliError::Usage)?;
    print!("{}", table(&rows, tol));
    let n = rows.iter().filter(|r| r.regressed).count();
    if n > 0 {
        return Err(CliError::Regression(format!(
            "{n} metric(s) regressed beyond {}",
            args.tolerance
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tolerance_parses_percent_and_fraction() {
        assert_eq!(parse_tolerance("5%"), Ok(0.05));
        assert_eq!(parse_tolerance(" 0.1 "), Ok(0.1));
        assert!(parse_tolerance("5").is_err());
        assert!(parse_tolerance("x%").is_err());
        assert!(parse_tolerance("-1%").is_err());
    }

    fn serve(tput: f64, p99: f64) -> Value {
        json!({"benchmark": "serve", "levels": [{"concurrency": 4, "request_rate": null, "completed": 10,
            "output_throughput": tput, "request_throughput": 1.0, "goodput": null,
            "ttft_ms": {"p50": 10.0, "p99": p99}}]})
    }

    #[test]
    fn regression_is_a_ratio_beyond_tolerance_in_the_bad_direction() {
        let base = serve(100.0, 50.0);
        let rows = compare(&base, &serve(96.0, 52.0), 0.05).unwrap();
        assert!(rows.iter().all(|r| !r.regressed), "{rows:?}");
        let rows = compare(&base, &serve(94.0, 50.0), 0.05).unwrap();
        assert!(rows
            .iter()
            .any(|r| r.regressed && r.name == "c=4 output_throughput"));
        let rows = compare(&base, &serve(100.0, 53.0), 0.05).unwrap();
        assert!(rows
            .iter()
            .any(|r| r.regressed && r.name == "c=4 ttft_ms.p99"));
        // Improvements never fail.
        let rows = compare(&base, &serve(200.0, 5.0), 0.05).unwrap();
        assert!(rows.iter().all(|r| !r.regressed));
    }

    #[test]
    fn kinds_must_match_and_share_a_metric() {
        let engine = json!({"benchmark": "engine", "prefill": {"tokens_per_s": 1.0, "ttft_ms": 2.0}, "decode": []});
        assert!(compare(&serve(1.0, 1.0), &engine, 0.05).is_err());
        let other =
            json!({"benchmark": "serve", "levels": [{"concurrency": 8, "output_throughput": 1.0}]});
        assert!(compare(&serve(1.0, 1.0), &other, 0.05).is_err());
        assert!(metrics(&json!({"x": 1})).is_err());
    }
}
