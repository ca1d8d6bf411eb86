//! `kr-serve bench …`: benchmarks that write JSON reports.
//!
//! - `engine` ([`engine`]): offline throughput of the in-process engine.
//! - `overhead` ([`overhead`]): the same prompts through the engine and through the HTTP
//!   server in one process; the server's cost as a percentage.
//! - `serve` ([`serve`]): a load generator for any OpenAI-compatible server.
//! - `compare` ([`compare`]): a regression gate over two reports.
//! - `perplexity` ([`perplexity`]): a model's perplexity on a text, as llama-perplexity computes it.
//!
//! Invariants: benchmarks never assert timings; every report records the machine, the
//! commit, the command line and the load average, so numbers can be judged later.

pub mod client;
pub mod compare;
pub mod dataset;
pub mod engine;
pub mod gpu;
pub mod kld;
pub mod overhead;
pub mod perplexity;
pub mod plot;
pub mod report;
pub mod serve;
pub mod stats;

pub use engine::bench_engine;

use crate::error::{CliError, Result};
use serde_json::json;
use std::path::Path;

/// CPU model, core count and OS, for the report.
pub fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown".to_string(), |s| s.trim().to_string());
    json!({"cpu": cpu, "cores": std::thread::available_parallelism().map_or(0, |n| n.get()), "os": std::env::consts::OS, "arch": std::env::consts::ARCH})
}

/// The git commit HEAD pointed at when this binary was built (see build.rs): what ran.
pub fn build_commit() -> &'static str {
    env!("KR_BUILD_COMMIT")
}

/// The git commit of the working tree the benchmark runs in, if there is one (`-dirty` when it
/// has changes); it differs from [`build_commit`] when the binary was built elsewhere.
pub fn commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(head) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown".into();
    };
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{head}-dirty")
    } else {
        head
    }
}

/// The 1, 5 and 15 minute load averages (Linux), or `null` where unknown: the machine may
/// be shared, and a busy neighbour shows here.
pub fn load_average() -> serde_json::Value {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let v: Vec<f64> = text
        .split_whitespace()
        .take(3)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() == 3 {
        json!(v)
    } else {
        serde_json::Value::Null
    }
}

/// The command line as typed.
pub fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

/// Seconds since the Unix epoch.
pub fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Writes `text` to `path`, naming the path in the error.
pub fn write_file(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| CliError::Write {
            path: dir.display().to_string(),
            source,
        })?;
    }
    std::fs::write(path, text).map_err(|source| CliError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// Writes a JSON report to `path`, or prints it when there is none.
pub fn emit_json(value: &serde_json::Value, path: Option<&Path>) -> Result<()> {
    let text = serde_json::to_string_pretty(value).unwrap_or_default() + "\n";
    match path {
        Some(p) => write_file(p, &text),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}
