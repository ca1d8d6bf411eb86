//! `kr-serve bench overhead`: what the HTTP server costs over the in-process engine
//! (SPEC B1, the original's 50-question benchmark).
//!
//! One engine serves both sides: the "engine" side submits through `EngineHandle`, the
//! "http" side posts streaming `/v1/chat/completions` requests to kr-server, started in
//! this process on 127.0.0.1:0, over real loopback TCP with reqwest. Both sides send the
//! same user messages (the engine renders the chat template in both cases), greedy, the
//! same seeds, `ignore_eos` and the same `max_tokens`, from the same async runtime with
//! the same number of workers. A warm-up first prefills every prompt once, so the prefix
//! cache is equally warm for every measured pass. Each repeat runs both sides back to back,
//! alternating which goes first, and the overhead is measured per repeat (paired), so slow
//! drift from a shared machine cancels out. Never asserts timings.

use super::client::{self, Endpoint, Outcome, Target};
use super::dataset::{self, Sample};
use super::stats::{histogram_percentile_upper, median, Summary};
use super::{command_line, commit, emit_json, load_average, machine, unix_time};
use crate::cli::BenchOverheadArgs;
use crate::error::{CliError, Result};
use crate::run::start_engine;
use kr_engine::{ChatMessage, EngineHandle, Event, GenerateRequest, Prompt, SamplingParams};
use serde_json::{json, Value};
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
    outcomes: Vec<Outcome>,
    fast_path: u64,
    queue_counts: Vec<u64>,
}

/// Everything a pass needs.
struct Ctx {
    engine: EngineHandle,
    client: reqwest::Client,
    target: Target,
    samples: Vec<Sample>,
    seed: u64,
}

pub fn bench_overhead(args: BenchOverheadArgs) -> Result<()> {
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
    let engine = start_engine(&args.engine)?;
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
        "model": args.engine.model_path().display().to_string(),
        "machine": machine(),
        "commit": commit(),
        "command": command_line(),
        "unix_time": started,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "settings": {
            "questions": args.questions.as_ref().map_or("builtin questions-50".into(), |p| p.display().to_string()),
            "num_prompts": samples.len(), "max_tokens": args.max_tokens, "ignore_eos": true,
            "temperature": 0.0, "seed": args.seed, "repeat": args.repeat,
            "concurrency": args.concurrency, "runtime_threads": args.runtime_threads,
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
    let server = tokio::spawn(kr_server::serve(
        listener,
        engine.clone(),
        kr_server::ServerConfig::default(),
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
    run_pass(&Arc::new(prefill_only), Side::Engine, 8).await?;
    let few = Ctx {
        samples: ctx.samples.iter().take(4).cloned().collect(),
        ..clone_ctx(ctx)
    };
    let few = Arc::new(few);
    for side in [Side::Engine, Side::Http] {
        run_pass(&few, side, 4).await?;
    }
    let mut out = Vec::new();
    for (li, &c) in args.concurrency.iter().enumerate() {
        let mut pairs = Vec::new();
        for r in 0..args.repeat {
            let order = if (r + li) % 2 == 0 {
                [Side::Engine, Side::Http]
            } else {
                [Side::Http, Side::Engine]
            };
            let mut pair: [Option<Pass>; 2] = [None, None];
            for side in order {
                let pass = run_pass(ctx, side, c).await?;
                eprintln!(
                    "concurrency {c}, repeat {}/{}: {:>6} {:.3} s",
                    r + 1,
                    args.repeat,
                    side.name(),
                    pass.total_s
                );
                pair[(side == Side::Http) as usize] = Some(pass);
            }
            if let [Some(e), Some(h)] = pair {
                pairs.push((order[0], e, h));
            }
        }
        let level = level_json(c, &pairs);
        eprintln!(
            "concurrency {c}: overhead {:.2}% (median of {} paired repeats)",
            level["overhead_percent"].as_f64().unwrap_or(f64::NAN),
            pairs.len()
        );
        out.push(level);
    }
    Ok(out)
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
async fn run_pass(ctx: &Arc<Ctx>, side: Side, concurrency: usize) -> Result<Pass> {
    let before = ctx.engine.stats().snapshot().fast_path;
    let queue_before = ctx.engine.stats().queue_seconds.snapshot().counts;
    let next = Arc::new(AtomicUsize::new(0));
    let results = Arc::new(Mutex::new(Vec::with_capacity(ctx.samples.len())));
    let t0 = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.min(ctx.samples.len()) {
        let (ctx, next, results) = (ctx.clone(), next.clone(), results.clone());
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(sample) = ctx.samples.get(i) else {
                    break;
                };
                let seed = ctx.seed + i as u64;
                let out = match side {
                    Side::Engine => engine_request(&ctx.engine, sample, seed, t0).await,
                    Side::Http => {
                        client::send(
                            &ctx.client,
                            &ctx.target,
                            sample,
                            seed,
                            t0,
                            Duration::from_secs(3600),
                        )
                        .await
                    }
                };
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
        outcomes: outcomes.into_iter().map(|(_, o)| o).collect(),
        fast_path: ctx.engine.stats().snapshot().fast_path - before,
        queue_counts: queue_after
            .iter()
            .zip(&queue_before)
            .map(|(a, b)| a - b)
            .collect(),
    })
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
    // What kr-server builds from {"temperature": 0, "seed", "ignore_eos": true, "max_tokens"}.
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
        }
    }
    out.error = Some("the engine stopped before the request finished".into());
    out
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
        "latency_ms": Summary::of(&lat),
        "ttft_ms": Summary::of(&ttft),
        "itl_ms": Summary::of(&itl),
        "tokens_per_s": median(&tps),
        "tokens_per_s_per_repeat": tps,
        "output_tokens_per_pass": passes.first().map(|p| p.outcomes.iter().map(|o| o.output_tokens).sum::<usize>()),
        "fast_path_per_pass": passes.iter().map(|p| p.fast_path).collect::<Vec<_>>(),
        "queue_wait_p99_ms_upper_bound": q99.map(|s| if s.is_finite() { json!(s * 1e3) } else { json!("> 60000") }),
    })
}

/// The level's JSON: both sides, paired overheads, and whether both generated the same.
fn level_json(concurrency: usize, pairs: &[(Side, Pass, Pass)]) -> Value {
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
        "overhead_percent": median(&per_repeat),
        "overhead_percent_per_repeat": per_repeat,
        "overhead_percent_spread": {"min": per_repeat.iter().copied().fold(f64::INFINITY, f64::min), "max": per_repeat.iter().copied().fold(f64::NEG_INFINITY, f64::max), "mean": per_repeat.iter().sum::<f64>() / per_repeat.len().max(1) as f64},
        "overhead_percent_of_summed_time": (sum(&http) / sum(&eng) - 1.0) * 100.0,
        "latency_overhead_percent": (mean_lat(&http) / mean_lat(&eng) - 1.0) * 100.0,
        "http_over_engine_time_ratio": sum(&http) / sum(&eng),
        "first_side_per_repeat": pairs.iter().map(|p| p.0.name()).collect::<Vec<_>>(),
        "identical_outputs": same_text,
        "identical_token_counts": same_tokens,
        "engine": side_json(&eng),
        "http": side_json(&http),
    })
}
