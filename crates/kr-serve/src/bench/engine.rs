//! `kr-serve bench engine`: offline throughput of the in-process engine (no HTTP).
//! Seeded random prompts (distinct per run, so the prefix cache never helps), ignore_eos,
//! a warm-up request, the median of `repeat` runs. Writes a JSON report with the machine,
//! the commit and the command line. Never asserts timings.

use super::stats::median;
use super::{build_commit, commit, machine};
use crate::cli::BenchEngineArgs;
use crate::error::{CliError, Result};
use crate::run::start_engine;
use kr_engine::{
    Constraint, ConstraintKind, DeviceChoice, EngineHandle, Event, GenerateRequest, Prompt,
    RequestOptions, SamplingParams,
};
use kr_http::config::Inputs;
use serde_json::json;
use std::time::{Duration, Instant};

/// Timings of one request.
struct Timing {
    first_token: Instant,
    end: Instant,
    tokens: usize,
}

/// A pseudo-random prompt of `len` ordinary token ids (a small LCG keeps it reproducible).
fn random_prompt(seed: u64, len: usize, vocab: usize) -> Vec<u32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let lo = 256.min(vocab / 4) as u64;
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (lo + (x >> 33) % (vocab as u64 - 2 * lo)) as u32
        })
        .collect()
}

/// Submits all prompts at once and waits for every request, timing each on its own thread.
fn run_batch(
    engine: &EngineHandle,
    prompts: Vec<Vec<u32>>,
    max_tokens: u32,
    constraint: Option<&Constraint>,
) -> Result<(Instant, Vec<Timing>)> {
    let params = SamplingParams {
        max_tokens,
        ignore_eos: constraint.is_none(),
        ..SamplingParams::greedy(max_tokens)
    };
    let opts = RequestOptions {
        constraint: constraint.cloned(),
        ..RequestOptions::default()
    };
    let start = Instant::now();
    let streams = prompts
        .into_iter()
        .map(|p| {
            let req = GenerateRequest {
                prompt: Prompt::Tokens(p),
                params: params.clone(),
            };
            engine.submit_with(req, opts.clone())
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let timings = std::thread::scope(|s| {
        let handles: Vec<_> = streams
            .into_iter()
            .map(|mut st| {
                s.spawn(move || {
                    let mut first = None;
                    let mut tokens = 0;
                    while let Some(ev) = st.next_blocking() {
                        match ev {
                            Event::Token { .. } => {
                                first.get_or_insert_with(Instant::now);
                                tokens += 1;
                            }
                            Event::Finished { .. } => {
                                return Ok(Timing {
                                    first_token: first.unwrap_or_else(Instant::now),
                                    end: Instant::now(),
                                    tokens,
                                })
                            }
                            Event::Error(e) => return Err(CliError::Generation(e)),
                            Event::Embedding { .. } => break,
                        }
                    }
                    Err(CliError::Generation("stream ended early".into()))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(CliError::Generation("bench thread panicked".into())))
            })
            .collect::<Result<Vec<_>>>()
    })?;
    Ok((start, timings))
}

/// `--json-schema`: the schema file as a constraint.
fn json_schema(args: &BenchEngineArgs) -> Result<Option<Constraint>> {
    let Some(path) = &args.json_schema else {
        return Ok(None);
    };
    let bad = |e: String| CliError::Usage(format!("--json-schema {}: {e}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let schema = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    Ok(Some(Constraint::new(
        "json_schema",
        ConstraintKind::JsonSchema(schema),
    )))
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

pub fn bench_engine(args: BenchEngineArgs, inputs: &Inputs) -> Result<()> {
    if args.repeat == 0
        || args.batch_sizes.is_empty()
        || args.batch_sizes.contains(&0)
        || args.gen_tokens < 2
    {
        return Err(CliError::Usage(
            "--repeat and every --batch-sizes entry must be at least 1, --gen-tokens at least 2"
                .into(),
        ));
    }
    let constraint = json_schema(&args)?;
    let mut c = crate::settings::resolve(inputs)?.config;
    // Probe for a GPU once; the runner then places on the resolved device.
    c.device = c.device.resolve();
    // The GPU bench drives the runner directly; a schema needs the engine's sampler, so with
    // --json-schema the GPU is measured through the engine like the CPU.
    if c.device != DeviceChoice::Cpu && constraint.is_none() {
        return super::gpu::bench_engine_gpu(args, &c);
    }
    let engine = start_engine(&c)?;
    let vocab = engine.info().config.vocab_size;
    let mut seed = args.seed * 1_000_003;
    let mut next_prompt = |len| {
        seed += 1;
        random_prompt(seed, len, vocab)
    };
    eprintln!("warm-up …");
    run_batch(&engine, vec![next_prompt(16)], 8, None)?;
    if let Some(c) = &constraint {
        run_batch(&engine, vec![next_prompt(16)], 8, Some(c))?;
    }
    let mut prefill = Vec::new();
    for _ in 0..args.repeat {
        let (start, t) = run_batch(&engine, vec![next_prompt(args.prefill_tokens)], 1, None)?;
        prefill.push(secs(t[0].first_token - start));
    }
    let ttft = median(&prefill).unwrap_or(f64::NAN);
    eprintln!(
        "prefill {} tokens: TTFT {:.1} ms, {:.1} tokens/s",
        args.prefill_tokens,
        ttft * 1e3,
        args.prefill_tokens as f64 / ttft
    );
    let mut decode = Vec::new();
    for &b in &args.batch_sizes {
        let mut measure = |constraint: Option<&Constraint>| -> Result<(f64, f64)> {
            let mut rates = Vec::new();
            let mut ttfts = Vec::new();
            for _ in 0..args.repeat {
                let prompts = (0..b).map(|_| next_prompt(args.prompt_tokens)).collect();
                let (start, t) = run_batch(&engine, prompts, args.gen_tokens, constraint)?;
                let decode_start = t.iter().map(|x| x.first_token).max().unwrap_or(start);
                let end = t.iter().map(|x| x.end).max().unwrap_or(start);
                let generated: usize = t.iter().map(|x| x.tokens - 1).sum();
                rates.push(generated as f64 / secs(end - decode_start).max(1e-9));
                ttfts.push(secs(decode_start - start));
            }
            Ok((
                median(&rates).unwrap_or(f64::NAN),
                median(&ttfts).unwrap_or(f64::NAN),
            ))
        };
        let (tps, ttft) = measure(None)?;
        eprintln!(
            "batch {b:>3}: decode {tps:.1} tokens/s ({:.1} per sequence)",
            tps / b as f64
        );
        let mut row = json!({"batch_size": b, "decode_tokens_per_s": tps, "per_sequence_tokens_per_s": tps / b as f64, "ms_per_step": 1e3 * b as f64 / tps, "ttft_all_prompts_ms": ttft * 1e3});
        if let Some(c) = &constraint {
            let (ctps, _) = measure(Some(c))?;
            eprintln!(
                "batch {b:>3}: with --json-schema {ctps:.1} tokens/s ({:.1}% of unconstrained)",
                100.0 * ctps / tps
            );
            row["json_schema_decode_tokens_per_s"] = json!(ctps);
            row["json_schema_ratio"] = json!(ctps / tps);
        }
        decode.push(row);
    }
    let report = json!({
        "benchmark": "engine",
        "model": c.model,
        "device": format!("{:?}", c.device),
        "machine": machine(),
        "commit": build_commit(),
        "checkout_commit": commit(),
        "command": crate::bench::command_line(),
        "unix_time": crate::bench::unix_time(),
        "settings": {"prompt_tokens": args.prompt_tokens, "gen_tokens": args.gen_tokens, "prefill_tokens": args.prefill_tokens, "repeat": args.repeat, "seed": args.seed, "ignore_eos": "yes, except the --json-schema runs", "json_schema": args.json_schema, "threads": rayon_threads()},
        "prefill": {"tokens": args.prefill_tokens, "ttft_ms": ttft * 1e3, "tokens_per_s": args.prefill_tokens as f64 / ttft},
        "decode": decode,
    });
    crate::bench::emit_json(&report, args.out.as_deref())?;
    engine.shutdown();
    Ok(())
}

pub(crate) fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}
