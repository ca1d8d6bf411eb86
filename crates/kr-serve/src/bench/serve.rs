//! `kr-serve bench serve`: a load generator for any OpenAI-compatible server.
//!
//! For each concurrency level: a few warm-up requests (not measured), then the workload,
//! sent at a seeded Poisson rate (or all at once) with at most `concurrency` requests in
//! flight. Each request is timed by [`client::send`]; the level's report holds TTFT, TPOT,
//! ITL and E2E summaries, throughput, goodput under the SLOs, and every request's timings
//! (for CDF plots and later comparisons). Invariants: the workload and the arrival times
//! depend only on the flags and the seed; failed requests are counted, never timed.

use super::client::{self, Outcome, Target};
use super::dataset::{self, Sample};
use super::stats::Summary;
use super::{build_commit, command_line, commit, load_average, machine, plot, report, unix_time};
use crate::cli::{BenchServeArgs, DatasetKind};
use crate::error::{CliError, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The questions of mlx-serving's 50-question benchmark (the default workload).
pub const QUESTIONS_50: &str = include_str!("../../assets/questions-50.txt");

/// The workload the flags describe.
pub fn workload(args: &BenchServeArgs) -> Result<Vec<Sample>> {
    let n = args.num_prompts;
    let samples = match args.dataset {
        DatasetKind::Random => dataset::random(
            if n == 0 { 100 } else { n },
            args.random_input_len,
            args.max_tokens
                .map_or(args.random_output_len, |m| m as usize),
            args.random_range_ratio,
            args.seed,
        ),
        DatasetKind::Questions => {
            let max = args.max_tokens.unwrap_or(64);
            match &args.dataset_path {
                Some(p) => dataset::questions(p, n, max)?,
                None => dataset::parse_questions(QUESTIONS_50, n, max).unwrap_or_default(),
            }
        }
        DatasetKind::Sharegpt => {
            let path = args.dataset_path.as_ref().ok_or_else(|| {
                CliError::Usage("--dataset sharegpt needs --dataset-path FILE.json".into())
            })?;
            dataset::sharegpt(path, n, args.max_tokens, args.seed)?
        }
    };
    Ok(samples)
}

fn validate(args: &BenchServeArgs) -> Result<()> {
    let bad = |m: &str| Err(CliError::Usage(m.into()));
    if args.concurrency.is_empty() || args.concurrency.contains(&0) {
        return bad("every --concurrency entry must be at least 1 (e.g. --concurrency 1,4,8)");
    }
    if args.request_rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
        return bad("--request-rate must be > 0 requests/s (leave it out to send at once)");
    }
    if !(0.0..1.0).contains(&args.random_range_ratio) {
        return bad("--random-range-ratio must be in [0, 1)");
    }
    if args.max_tokens == Some(0) || args.random_input_len == 0 || args.random_output_len == 0 {
        return bad("--max-tokens and the --random-*-len flags must be at least 1");
    }
    if !args.url.starts_with("http://") && !args.url.starts_with("https://") {
        return bad("--url must start with http:// (e.g. http://127.0.0.1:8080)");
    }
    if args.request_timeout.is_nan() || args.request_timeout <= 0.0 {
        return bad("--request-timeout must be > 0 seconds");
    }
    Ok(())
}

pub fn bench_serve(args: BenchServeArgs) -> Result<()> {
    validate(&args)?;
    let samples = workload(&args)?;
    let target = Target {
        base: args.url.clone(),
        endpoint: args.endpoint,
        model: args.model.clone(),
        api_key: args.api_key.clone(),
        ignore_eos: args.ignore_eos,
        temperature: args.temperature,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::Bench(format!("cannot start the async runtime: {e}")))?;
    let load_before = load_average();
    let started = unix_time();
    let levels = rt.block_on(async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .build()
            .map_err(|e| CliError::Bench(format!("cannot build the HTTP client: {e}")))?;
        let mut levels = Vec::new();
        for &c in &args.concurrency {
            levels.push(run_level(&client, &target, &samples, c, &args).await);
        }
        Ok::<_, CliError>(levels)
    })?;
    let report = report_json(&args, samples.len(), levels, started, load_before);
    for l in report["levels"].as_array().into_iter().flatten() {
        eprintln!("{}", report::level_line(l));
    }
    report::write_serve_outputs(&report, args.out.as_deref())?;
    if let (Some(out), false) = (&args.out, args.no_plots) {
        let label = report["label"].as_str().unwrap_or("").to_string();
        let written = plot::plot_reports(&[(label, report.clone())], &plot::prefix_of(out))?;
        for p in written {
            eprintln!("wrote {}", p.display());
        }
    }
    Ok(())
}

/// The whole report: what ran where, with which settings, and every level.
fn report_json(
    args: &BenchServeArgs,
    num_prompts: usize,
    levels: Vec<Value>,
    started: u64,
    load_before: Value,
) -> Value {
    json!({
        "benchmark": "serve",
        "label": args.label.clone().unwrap_or_else(|| args.model.clone()),
        "url": args.url,
        "model": args.model,
        "endpoint": args.endpoint,
        "machine": machine(),
        "commit": build_commit(),
        "checkout_commit": commit(),
        "command": command_line(),
        "unix_time": started,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "settings": {
            "dataset": format!("{:?}", args.dataset).to_lowercase(),
            "dataset_path": args.dataset_path.as_ref().map(|p| p.display().to_string()),
            "num_prompts": num_prompts,
            "max_tokens": args.max_tokens,
            "ignore_eos": args.ignore_eos,
            "temperature": args.temperature,
            "request_rate": args.request_rate,
            "warmup": args.warmup,
            "seed": args.seed,
            "slo_ttft_ms": args.slo_ttft_ms,
            "slo_tpot_ms": args.slo_tpot_ms,
            "slo_e2e_ms": args.slo_e2e_ms,
        },
        "levels": levels,
    })
}

/// Runs the warm-up and the workload at one concurrency; the level's JSON.
async fn run_level(
    client: &reqwest::Client,
    target: &Target,
    samples: &[Sample],
    concurrency: usize,
    args: &BenchServeArgs,
) -> Value {
    let timeout = Duration::from_secs_f64(args.request_timeout);
    let warm: Vec<Sample> = samples.iter().take(args.warmup).cloned().collect();
    if !warm.is_empty() {
        let _ = run_requests(
            client,
            target,
            &warm,
            concurrency,
            None,
            args.seed,
            timeout,
            None,
        )
        .await;
    }
    let arrivals = args
        .request_rate
        .map(|r| dataset::poisson_arrivals(samples.len(), r, args.seed));
    let pb = progress(samples.len() as u64, concurrency, args.no_progress);
    let t0 = Instant::now();
    let outcomes = run_requests(
        client,
        target,
        samples,
        concurrency,
        arrivals,
        args.seed,
        timeout,
        Some(pb.clone()),
    )
    .await;
    let duration = t0.elapsed().as_secs_f64();
    pb.finish_and_clear();
    level_json(concurrency, args, &outcomes, duration)
}

fn progress(len: u64, concurrency: usize, hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} requests ({eta} left)",
    ) {
        pb.set_style(style);
    }
    pb.set_prefix(format!("concurrency {concurrency}"));
    pb
}

/// Sends every sample (at its arrival time, if any) with at most `concurrency` in flight.
#[allow(clippy::too_many_arguments)]
async fn run_requests(
    client: &reqwest::Client,
    target: &Target,
    samples: &[Sample],
    concurrency: usize,
    arrivals: Option<Vec<f64>>,
    seed: u64,
    timeout: Duration,
    pb: Option<ProgressBar>,
) -> Vec<Outcome> {
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, sample) in samples.iter().enumerate() {
        if let Some(at) = arrivals.as_ref().and_then(|a| a.get(i)) {
            tokio::time::sleep_until((t0 + Duration::from_secs_f64(*at)).into()).await;
        }
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        let (client, target, sample, pb) =
            (client.clone(), target.clone(), sample.clone(), pb.clone());
        tasks.spawn(async move {
            let out = client::send(&client, &target, &sample, seed + i as u64, t0, timeout).await;
            drop(permit);
            if let Some(pb) = pb {
                pb.inc(1);
            }
            (i, out)
        });
    }
    let mut outs: Vec<(usize, Outcome)> = Vec::with_capacity(samples.len());
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(x) => outs.push(x),
            Err(e) => outs.push((
                usize::MAX,
                Outcome {
                    error: Some(format!("task failed: {e}")),
                    ..Outcome::default()
                },
            )),
        }
    }
    outs.sort_by_key(|(i, _)| *i);
    outs.into_iter().map(|(_, o)| o).collect()
}

fn ms(v: impl Iterator<Item = f64>) -> Vec<f64> {
    v.map(|s| s * 1e3).collect()
}

/// The JSON of one level: counts, throughput, goodput, summaries and per-request timings.
fn level_json(concurrency: usize, args: &BenchServeArgs, outs: &[Outcome], duration: f64) -> Value {
    let ok: Vec<&Outcome> = outs.iter().filter(|o| o.ok()).collect();
    let duration = duration.max(1e-9);
    let output_tokens: usize = ok.iter().map(|o| o.output_tokens).sum();
    let prompt_tokens: Option<usize> = ok.iter().map(|o| o.prompt_tokens).sum();
    let ttft = ms(ok.iter().map(|o| o.ttft));
    let e2e = ms(ok.iter().map(|o| o.e2e));
    let tpot = ms(ok.iter().filter_map(|o| o.tpot()));
    let itl = ms(ok.iter().flat_map(|o| o.itl.iter().copied()));
    let meets = |o: &Outcome| {
        args.slo_ttft_ms.is_none_or(|s| o.ttft * 1e3 <= s)
            && args
                .slo_tpot_ms
                .is_none_or(|s| o.tpot().is_none_or(|t| t * 1e3 <= s))
            && args.slo_e2e_ms.is_none_or(|s| o.e2e * 1e3 <= s)
    };
    let has_slo =
        args.slo_ttft_ms.is_some() || args.slo_tpot_ms.is_some() || args.slo_e2e_ms.is_some();
    let good = ok.iter().filter(|o| meets(o)).count();
    let errors: Vec<&str> = outs
        .iter()
        .filter_map(|o| o.error.as_deref())
        .take(5)
        .collect();
    json!({
        "concurrency": concurrency,
        "request_rate": args.request_rate,
        "completed": ok.len(),
        "failed": outs.len() - ok.len(),
        "errors": errors,
        "duration_s": duration,
        "request_throughput": ok.len() as f64 / duration,
        "output_throughput": output_tokens as f64 / duration,
        "total_token_throughput": prompt_tokens.map(|p| (p + output_tokens) as f64 / duration),
        "total_output_tokens": output_tokens,
        "total_prompt_tokens": prompt_tokens,
        "goodput": has_slo.then(|| good as f64 / duration),
        "slo_met": has_slo.then_some(good),
        "ttft_ms": Summary::of(&ttft),
        "tpot_ms": Summary::of(&tpot),
        "itl_ms": Summary::of(&itl),
        "e2e_ms": Summary::of(&e2e),
        "requests": ok.iter().map(|o| json!({
            "start_s": o.start_offset,
            "ttft_ms": o.ttft * 1e3,
            "e2e_ms": o.e2e * 1e3,
            "tpot_ms": o.tpot().map(|t| t * 1e3),
            "output_tokens": o.output_tokens,
            "prompt_tokens": o.prompt_tokens,
        })).collect::<Vec<_>>(),
    })
}
