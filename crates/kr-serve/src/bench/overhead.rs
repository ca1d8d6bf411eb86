//! `kr-serve bench overhead`: what the HTTP server costs over the in-process engine
//! (mlx-serving's 50-question benchmark).
//!
//! One engine serves both sides: the "engine" side submits through `EngineHandle`, the
//! "http" side posts streaming `/v1/chat/completions` requests to kr-http, started in
//! this process on 127.0.0.1:0, over real loopback TCP with reqwest. Both sides send the
//! same user messages (the engine renders the chat template in both cases), greedy, the
//! same seeds, `ignore_eos` and the same `max_tokens`, from the same async runtime with
//! the same number of workers. A warm-up first prefills every prompt once, so the prefix
//! cache is equally warm for every measured pass. Each repeat splits the questions into
//! chunks (`--interleave`, at least the concurrency) and runs every chunk through both
//! sides back to back, alternating which goes first; a side's total is the sum of its
//! chunks, and the overhead is measured per repeat (paired), so load from neighbours on a
//! shared machine hits both sides alike. Never asserts timings.

use super::client::{self, Endpoint, Outcome, Target};
use super::dataset::{self, Sample};
use super::stats::{histogram_percentile_upper, median, Summary};
use super::{build_commit, command_line, commit, emit_json, load_average, machine, unix_time};
use crate::cli::BenchOverheadArgs;
use crate::error::{CliError, Result};
use crate::run::start_engine;
use kr_engine::{ChatMessage, EngineHandle, Event, GenerateRequest, Prompt, SamplingParams};
use kr_http::config::Inputs;
use serde_json::{json, Value};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The two paths a request can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Engine,
    Http,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Engine => "engine",
            Side::Http => "http",
        }
    }
}

/// One pass of every question through one side.
struct Pass {
    total_s: f64,
    /// Wall time of each chunk (one entry for a whole pass).
    chunk_s: Vec<f64>,
    outcomes: Vec<Outcome>,
    fast_path: u64,
    queue_counts: Vec<u64>,
}

impl Pass {
    fn empty() -> Pass {
        Pass {
            total_s: 0.0,
            chunk_s: Vec::new(),
            outcomes: Vec::new(),
            fast_path: 0,
            queue_counts: Vec::new(),
        }
    }

    /// Adds a later chunk of the same side's pass.
    fn merge(&mut self, other: Pass) {
        self.total_s += other.total_s;
        self.chunk_s.extend(other.chunk_s);
        self.outcomes.extend(other.outcomes);
        self.fast_path += other.fast_path;
        if self.queue_counts.is_empty() {
            self.queue_counts = other.queue_counts;
        } else {
            for (a, b) in self.queue_counts.iter_mut().zip(other.queue_counts) {
                *a += b;
            }
        }
    }
}

/// Everything a pass needs.
struct Ctx {
    engine: EngineHandle,
    client: reqwest::Client,
    target: Target,
    samples: Vec<Sample>,
    seed: u64,
}

pub fn bench_overhead(args: BenchOverheadArgs, inputs: &Inputs) -> Result<()> {
    if args.repeat == 0
        || args.concurrency.is_empty()
        || args.concurrency.contains(&0)
        || args.max_tokens == 0
    {
        return Err(CliError::Usage(
            "--repeat, --max-tokens and every --concurrency entry must be at least 1".into(),
        ));
    }
    let samples = match &args.questions {
        Some(p) => dataset::questions(p, args.num_prompts, args.max_tokens)?,
        None => dataset::parse_questions(
            super::serve::QUESTIONS_50,
            args.num_prompts,
            args.max_tokens,
        )
        .unwrap_or_default(),
    };
    let c = crate::settings::resolve(inputs)?.config;
    let engine = start_engine(&c)?;
    if !engine.has_chat_template() {
        eprintln!("note: the model has no chat template; both sides send the question as raw text (/v1/completions)");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.runtime_threads)
        .enable_all()
        .build()
        .map_err(|e| CliError::Bench(format!("cannot start the async runtime: {e}")))?;
    let load_before = load_average();
    let started = unix_time();
    let levels = rt.block_on(measure(&args, engine.clone(), samples.clone()));
    engine.shutdown();
    let levels = levels?;
    let worst = levels
        .iter()
        .filter_map(|l| l["overhead_percent"].as_f64())
        .fold(f64::NEG_INFINITY, f64::max);
    let report = json!({
        "benchmark": "overhead",
        "overhead_percent": worst,
        "overhead_definition": "per concurrency level: median over repeats of (http total time / engine total time - 1) * 100; top level: the largest of the levels",
        "model": c.model,
        "machine": machine(),
        "commit": build_commit(),
        "checkout_commit": commit(),
        "command": command_line(),
        "unix_time": started,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "settings": {
            "questions": args.questions.as_ref().map_or("builtin questions-50".into(), |p| p.display().to_string()),
            "num_prompts": samples.len(), "max_tokens": args.max_tokens, "ignore_eos": true,
            "temperature": 0.0, "seed": args.seed, "repeat": args.repeat,
            "concurrency": args.concurrency, "interleave": args.interleave, "runtime_threads": args.runtime_threads,
            "threads": super::engine::rayon_threads(), "endpoint": "/v1/chat/completions (stream; /v1/completions for a model without a chat template)",
        },
        "levels": levels,
    });
    eprintln!("overhead_percent (worst level): {worst:.2}%");
    emit_json(&report, args.out.as_deref())
}

/// Starts the server, warms up, then measures every level.
async fn measure(
    args: &BenchOverheadArgs,
    engine: EngineHandle,
    samples: Vec<Sample>,
) -> Result<Vec<Value>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| CliError::Bench(format!("cannot listen on 127.0.0.1:0: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CliError::Bench(format!("no local address: {e}")))?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(kr_http::serve(
        listener,
        engine.clone(),
        kr_http::ServerConfig::default(),
        async {
            let _ = stop_rx.await;
        },
    ));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .map_err(|e| CliError::Bench(format!("cannot build the HTTP client: {e}")))?;
    let target = Target {
        base: format!("http://{addr}"),
        // Without a chat template both sides send raw text (the engine's Prompt::Text).
        endpoint: if engine.has_chat_template() {
            Endpoint::Chat
        } else {
            Endpoint::Completions
        },
        model: engine.info().name.clone(),
        api_key: None,
        ignore_eos: true,
        temperature: 0.0,
    };
    let ctx = Arc::new(Ctx {
        engine,
        client,
        target,
        samples,
        seed: args.seed,
    });
    let result = levels(&ctx, args).await;
    let _ = stop_tx.send(());
    let _ = server.await;
    result
}

async fn levels(ctx: &Arc<Ctx>, args: &BenchOverheadArgs) -> Result<Vec<Value>> {
    eprintln!(
        "warm-up: prefilling {} prompts, then a few requests on each side …",
        ctx.samples.len()
    );
    let prefill_only = Ctx {
        samples: ctx
            .samples
            .iter()
            .map(|s| Sample {
                max_tokens: 1,
                ..s.clone()
            })
            .collect(),
        ..clone_ctx(ctx)
    };
    let all = 0..ctx.samples.len();
    run_pass(&Arc::new(prefill_only), Side::Engine, 8, all).await?;
    let few = Ctx {
        samples: ctx.samples.iter().take(4).cloned().collect(),
        ..clone_ctx(ctx)
    };
    let few = Arc::new(few);
    for side in [Side::Engine, Side::Http] {
        run_pass(&few, side, 4, 0..few.samples.len()).await?;
    }
    let mut out = Vec::new();
    for (li, &c) in args.concurrency.iter().enumerate() {
        let chunk = if args.interleave == 0 {
            ctx.samples.len()
        } else {
            args.interleave.max(c)
        };
        let mut pairs = Vec::new();
        for r in 0..args.repeat {
            let pair = run_repeat(ctx, c, chunk, r + li).await?;
            eprintln!(
                "concurrency {c}, repeat {}/{}: engine {:.3} s, http {:.3} s ({:+.2}%)",
                r + 1,
                args.repeat,
                pair.1.total_s,
                pair.2.total_s,
                (pair.2.total_s / pair.1.total_s - 1.0) * 100.0
            );
            pairs.push(pair);
        }
        let level = level_json(c, chunk, &pairs);
        eprintln!(
            "concurrency {c}: overhead {:.2}% (median of {} paired repeats)",
            level["overhead_percent"].as_f64().unwrap_or(f64::NAN),
            pairs.len()
        );
        out.push(level);
    }
    Ok(out)
}

/// One repeat: the questions in chunks of `chunk`, each chunk through both sides back to
/// back, the side that goes first alternating from chunk to chunk (starting with the
/// engine when `parity` is even). Returns the side that went first and both sides' sums.
async fn run_repeat(
    ctx: &Arc<Ctx>,
    c: usize,
    chunk: usize,
    parity: usize,
) -> Result<(Side, Pass, Pass)> {
    let n = ctx.samples.len();
    let mut sides = [Pass::empty(), Pass::empty()];
    let first = if parity % 2 == 0 {
        Side::Engine
    } else {
        Side::Http
    };
    for (j, start) in (0..n).step_by(chunk.max(1)).enumerate() {
        let order = if (parity + j) % 2 == 0 {
            [Side::Engine, Side::Http]
        } else {
            [Side::Http, Side::Engine]
        };
        for side in order {
            let pass = run_pass(ctx, side, c, start..(start + chunk).min(n)).await?;
            sides[(side == Side::Http) as usize].merge(pass);
        }
    }
    let [e, h] = sides;
    Ok((first, e, h))
}

fn clone_ctx(ctx: &Ctx) -> Ctx {
    Ctx {
        engine: ctx.engine.clone(),
        client: ctx.client.clone(),
        target: ctx.target.clone(),
        samples: Vec::new(),
        seed: ctx.seed,
    }
}

/// Every sample through `side` with `concurrency` workers; fails on any failed request.
async fn run_pass(
    ctx: &Arc<Ctx>,
    side: Side,
    concurrency: usize,
    range: Range<usize>,
) -> Result<Pass> {
    let before = ctx.engine.stats().snapshot().fast_path;
    let queue_before = ctx.engine.stats().queue_seconds.snapshot().counts;
    let next = Arc::new(AtomicUsize::new(range.start));
    let results = Arc::new(Mutex::new(Vec::with_capacity(range.len())));
    let t0 = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.min(range.len()) {
        let (ctx, next, results, end) = (ctx.clone(), next.clone(), results.clone(), range.end);
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(sample) = ctx.samples.get(i).filter(|_| i < end) else {
                    break;
                };
                let out = one_request(&ctx, side, sample, i, t0).await;
                if let Ok(mut r) = results.lock() {
                    r.push((i, out));
                }
            }
        });
    }
    while let Some(r) = workers.join_next().await {
        r.map_err(|e| CliError::Bench(format!("a benchmark task failed: {e}")))?;
    }
    let total_s = t0.elapsed().as_secs_f64();
    let mut outcomes = std::mem::take(
        &mut *results
            .lock()
            .map_err(|_| CliError::Bench("results lock poisoned".into()))?,
    );
    outcomes.sort_by_key(|(i, _)| *i);
    if let Some((i, o)) = outcomes.iter().find(|(_, o)| !o.ok()) {
        return Err(CliError::Bench(format!(
            "{} request {i} failed: {}",
            side.name(),
            o.error.as_deref().unwrap_or("")
        )));
    }
    let queue_after = ctx.engine.stats().queue_seconds.snapshot().counts;
    Ok(Pass {
        total_s,
        chunk_s: vec![total_s],
        outcomes: outcomes.into_iter().map(|(_, o)| o).collect(),
        fast_path: ctx.engine.stats().snapshot().fast_path - before,
        queue_counts: queue_after
            .iter()
            .zip(&queue_before)
            .map(|(a, b)| a - b)
            .collect(),
    })
}

/// Question `i` through `side`, with seed `seed + i` on both sides.
async fn one_request(ctx: &Ctx, side: Side, sample: &Sample, i: usize, t0: Instant) -> Outcome {
    let seed = ctx.seed + i as u64;
    match side {
        Side::Engine => engine_request(&ctx.engine, sample, seed, t0).await,
        Side::Http => {
            let limit = Duration::from_secs(3600);
            client::send(&ctx.client, &ctx.target, sample, seed, t0, limit).await
        }
    }
}

/// One request through the engine's own API, timed like [`client::send`] times HTTP.
async fn engine_request(engine: &EngineHandle, sample: &Sample, seed: u64, t0: Instant) -> Outcome {
    let start = Instant::now();
    let mut out = Outcome {
        start_offset: (start - t0).as_secs_f64(),
        ..Outcome::default()
    };
    let prompt = if engine.has_chat_template() {
        Prompt::Chat(vec![ChatMessage::new("user", &sample.prompt)])
    } else {
        Prompt::Text(sample.prompt.clone())
    };
    // What kr-http builds from {"temperature": 0, "seed", "ignore_eos": true, "max_tokens"}.
    let params = SamplingParams {
        temperature: 0.0,
        seed: Some(seed),
        ignore_eos: true,
        max_tokens: sample.max_tokens,
        ..SamplingParams::default()
    };
    let mut stream = match engine.submit(GenerateRequest { prompt, params }) {
        Ok(s) => s,
        Err(e) => {
            out.error = Some(e.to_string());
            return out;
        }
    };
    let (mut first, mut last): (Option<Instant>, Option<Instant>) = (None, None);
    while let Some(ev) = stream.next().await {
        let now = Instant::now();
        match ev {
            Event::Token { text, .. } if !text.is_empty() => {
                if let Some(l) = last {
                    out.itl.push((now - l).as_secs_f64());
                }
                first.get_or_insert(now);
                last = Some(now);
                out.text.push_str(&text);
            }
            Event::Token { .. } => {}
            Event::Finished { usage, .. } => {
                out.output_tokens = usage.completion_tokens;
                out.prompt_tokens = Some(usage.prompt_tokens);
                out.e2e = (now - start).as_secs_f64();
                out.ttft = first.map_or(out.e2e, |f: Instant| (f - start).as_secs_f64());
                return out;
            }
            Event::Error(e) => {
                out.error = Some(e);
                return out;
            }
            Event::Embedding { .. } => break,
        }
    }
    out.error = Some("the engine stopped before the request finished".into());
    out
}

fn flat(v: &[&Pass], f: impl Fn(&Pass) -> Vec<f64>) -> Vec<f64> {
    v.iter().flat_map(|p| f(p)).collect()
}

fn e2es(p: &Pass) -> Vec<f64> {
    p.outcomes.iter().map(|o| o.e2e).collect()
}

fn side_json(passes: &[&Pass]) -> Value {
    let totals: Vec<f64> = passes.iter().map(|p| p.total_s).collect();
    let all = || passes.iter().flat_map(|p| p.outcomes.iter());
    let lat: Vec<f64> = all().map(|o| o.e2e * 1e3).collect();
    let ttft: Vec<f64> = all().map(|o| o.ttft * 1e3).collect();
    let itl: Vec<f64> = all().flat_map(|o| o.itl.iter().map(|x| x * 1e3)).collect();
    let tps: Vec<f64> = passes
        .iter()
        .map(|p| p.outcomes.iter().map(|o| o.output_tokens).sum::<usize>() as f64 / p.total_s)
        .collect();
    let mut queue = vec![0u64; passes.first().map_or(0, |p| p.queue_counts.len())];
    for p in passes {
        for (q, c) in queue.iter_mut().zip(&p.queue_counts) {
            *q += c;
        }
    }
    let q99 = histogram_percentile_upper(kr_engine::LATENCY_BUCKETS, &queue, 99.0);
    json!({
        "total_s": Summary::of(&totals),
        "total_s_per_repeat": totals,
        "chunk_s": flat(passes, |p| p.chunk_s.clone()),
        "latency_ms": Summary::of(&lat),
        "ttft_ms": Summary::of(&ttft),
        "itl_ms": Summary::of(&itl),
        "tokens_per_s": median(&tps),
        "tokens_per_s_per_repeat": tps,
        "output_tokens_per_repeat": passes.first().map(|p| p.outcomes.iter().map(|o| o.output_tokens).sum::<usize>()),
        "fast_path_per_repeat": passes.iter().map(|p| p.fast_path).collect::<Vec<_>>(),
        "queue_wait_p99_ms_upper_bound": q99.map(|s| if s.is_finite() { json!(s * 1e3) } else { json!("> 60000") }),
    })
}

/// Overhead of `h` over `e` from paired samples (same question or chunk, back to back):
/// `(Σh/Σe − 1)·100` with a 95% confidence interval from the spread of the differences.
fn paired(e: &[f64], h: &[f64]) -> Value {
    let n = e.len().min(h.len());
    if n < 2 {
        return Value::Null;
    }
    let d: Vec<f64> = e.iter().zip(h).map(|(a, b)| b - a).collect();
    let mean_e = e[..n].iter().sum::<f64>() / n as f64;
    let mean_d = d.iter().sum::<f64>() / n as f64;
    let sd = (d.iter().map(|x| (x - mean_d).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
    let half = 1.96 * sd / (n as f64).sqrt();
    json!({
        "percent": mean_d / mean_e * 100.0,
        "ci95_percent": [(mean_d - half) / mean_e * 100.0, (mean_d + half) / mean_e * 100.0],
        "pairs": n,
    })
}

/// The level's JSON: both sides, paired overheads, and whether both generated the same.
fn level_json(concurrency: usize, chunk: usize, pairs: &[(Side, Pass, Pass)]) -> Value {
    let eng: Vec<&Pass> = pairs.iter().map(|p| &p.1).collect();
    let http: Vec<&Pass> = pairs.iter().map(|p| &p.2).collect();
    let per_repeat: Vec<f64> = pairs
        .iter()
        .map(|(_, e, h)| (h.total_s / e.total_s - 1.0) * 100.0)
        .collect();
    let sum = |v: &[&Pass]| v.iter().map(|p| p.total_s).sum::<f64>();
    let mean_lat = |v: &[&Pass]| {
        v.iter()
            .flat_map(|p| p.outcomes.iter().map(|o| o.e2e))
            .sum::<f64>()
    };
    let same_text = pairs.iter().all(|(_, e, h)| {
        e.outcomes
            .iter()
            .zip(&h.outcomes)
            .all(|(a, b)| a.text == b.text)
    });
    let same_tokens = pairs.iter().all(|(_, e, h)| {
        e.outcomes
            .iter()
            .zip(&h.outcomes)
            .all(|(a, b)| a.output_tokens == b.output_tokens)
    });
    json!({
        "concurrency": concurrency,
        "interleave_chunk": chunk,
        "overhead_percent": median(&per_repeat),
        "overhead_percent_per_repeat": per_repeat,
        "overhead_percent_spread": {"min": per_repeat.iter().copied().fold(f64::INFINITY, f64::min), "max": per_repeat.iter().copied().fold(f64::NEG_INFINITY, f64::max), "mean": per_repeat.iter().sum::<f64>() / per_repeat.len().max(1) as f64},
        "paired_chunk_time_overhead": paired(&flat(&eng, |p| p.chunk_s.clone()), &flat(&http, |p| p.chunk_s.clone())),
        "paired_request_latency_overhead": paired(&flat(&eng, e2es), &flat(&http, e2es)),
        "overhead_percent_of_summed_time": (sum(&http) / sum(&eng) - 1.0) * 100.0,
        "latency_overhead_percent": (mean_lat(&http) / mean_lat(&eng) - 1.0) * 100.0,
        "http_over_engine_time_ratio": sum(&http) / sum(&eng),
        "first_side_of_first_chunk_per_repeat": pairs.iter().map(|p| p.0.name()).collect::<Vec<_>>(),
        "identical_outputs": same_text,
        "identical_token_counts": same_tokens,
        "engine": side_json(&eng),
        "http": side_json(&http),
    })
}
