//! `kr-serve bench engine --device cuda`: the GPU benchmark. It places the model through
//! the engine's [`Runner`] (the object `serve` runs) and drives it with synthetic
//! sequences (no scheduler, no HTTP), sampling every token on the device as the engine
//! does. It reports prefill speed and TTFT, batch-1 decode in each mode (graphs, overlap,
//! top-p), batched decode, the bandwidth bound and the fraction of it reached, the host
//! gap between steps (GPU events), the GEMM peak and the GPU time of every kernel of a
//! decode step. Timings are medians of repeats after a warm-up; it never asserts a speed.

use super::stats::median;
use super::{build_commit, commit, machine};
use crate::cli::BenchEngineArgs;
use crate::error::Result;
use kr_engine::{AttnMeta, DTypeChoice, EngineConfig, ModelWeights, RowSampling, Runner, SeqAttn};
use kr_http::config::Config;
use serde_json::{json, Value};
use std::time::Instant;

/// What to measure.
struct Spec {
    prompt_tokens: usize,
    gen_tokens: usize,
    prefill_tokens: usize,
    batch_sizes: Vec<usize>,
    batch_decode_steps: usize,
    repeat: usize,
    /// Tokens every decode run's sequences have room for (the runner's context limit): one
    /// block layout for all of them, so a later run can start from an earlier run's prompts.
    seq_len: usize,
}

/// Synthetic sequences with disjoint block tables: sequence `i` owns blocks
/// `[i * per_seq, (i + 1) * per_seq)`.
struct Seqs {
    lens: Vec<usize>,
    per_seq: usize,
    block_size: usize,
}

impl Seqs {
    fn new(n: usize, max_len: usize, block_size: usize) -> Self {
        Self {
            lens: vec![0; n],
            per_seq: max_len.div_ceil(block_size),
            block_size,
        }
    }

    /// One step: `new[i]` tokens for sequence `i` (0 = not in this step); samples every one.
    fn step(&mut self, new: &[usize]) -> (Vec<u32>, AttnMeta) {
        let mut ids = Vec::new();
        let mut meta = AttnMeta::default();
        for (i, &k) in new.iter().enumerate().filter(|(_, &k)| k > 0) {
            let table: Vec<u32> = (0..self.per_seq)
                .map(|b| (i * self.per_seq + b) as u32)
                .collect();
            let q_start = ids.len();
            for p in self.lens[i]..self.lens[i] + k {
                ids.push(((p * 7919 + i * 104_729) % 20_000 + 300) as u32);
                meta.positions.push(p as u32);
                let block = table[p / self.block_size] as usize;
                meta.slot_mapping
                    .push((block * self.block_size + p % self.block_size) as u32);
            }
            self.lens[i] += k;
            meta.seqs.push(SeqAttn {
                q_start,
                q_len: k,
                ctx_len: self.lens[i],
                block_table: table,
            });
            meta.logit_rows.push(ids.len() - 1);
        }
        (ids, meta)
    }
}

const BLOCK_SIZE: usize = 16;

/// Which prompts the KV cache holds: sequences `0..seqs` of a [`Seqs`] with `per_seq` blocks
/// each, prefilled with `prompt` tokens (the synthetic ids are a function of position and
/// sequence, so another `Seqs` of the same layout would write the same rows). Decode runs
/// only write past the prompt, so a later run of as many or fewer sequences can start from
/// them instead of prefilling again: at 130k tokens a prefill takes minutes.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Prefilled {
    seqs: usize,
    prompt: usize,
    per_seq: usize,
}

static PREFILLED: std::sync::Mutex<Option<Prefilled>> = std::sync::Mutex::new(None);

impl Seqs {
    /// Prefills `prompt` tokens into every sequence, or only moves them to `prompt` when the
    /// cache already holds these prompts (see [`Prefilled`]).
    fn start_at(&mut self, runner: &mut Runner, prompt: usize, budget: usize) -> Result<()> {
        let want = Prefilled {
            seqs: self.lens.len(),
            prompt,
            per_seq: self.per_seq,
        };
        let held = *PREFILLED.lock().unwrap_or_else(|e| e.into_inner());
        let reusable = held.is_some_and(|h| {
            h.prompt == want.prompt && h.per_seq == want.per_seq && h.seqs >= want.seqs
        });
        if reusable {
            self.lens.fill(prompt);
            return Ok(());
        }
        *PREFILLED.lock().unwrap_or_else(|e| e.into_inner()) = None;
        prefill_all(runner, self, prompt, budget)?;
        *PREFILLED.lock().unwrap_or_else(|e| e.into_inner()) = Some(want);
        Ok(())
    }
}

/// One greedy token per sampled row, through the engine's sampling path.
fn greedy_step(runner: &mut Runner, ids: &[u32], meta: &AttnMeta) -> Result<Vec<u32>> {
    let rows = vec![RowSampling::greedy(); meta.logit_rows.len()];
    Ok(runner.forward_sampled(ids, meta, &rows)?)
}

/// Prefill of `len` tokens in one sequence (in chunks of the step's token budget when it is
/// longer, as the engine does); returns seconds to the first token.
fn ttft(runner: &mut Runner, len: usize) -> Result<f64> {
    let budget = probes(runner)?.max_batched_tokens();
    let mut seqs = Seqs::new(1, len + 1, BLOCK_SIZE);
    *PREFILLED.lock().unwrap_or_else(|e| e.into_inner()) = None; // overwritten below
    let t0 = Instant::now();
    prefill_all(runner, &mut seqs, len, budget)?;
    Ok(t0.elapsed().as_secs_f64())
}

/// Feeds `prompt` tokens to every sequence of `seqs`: whole prompts of several sequences
/// share a step while they fit the token budget, and a longer prompt goes in chunks.
fn prefill_all(runner: &mut Runner, seqs: &mut Seqs, prompt: usize, budget: usize) -> Result<()> {
    let mut left = vec![prompt; seqs.lens.len()];
    while left.iter().any(|&l| l > 0) {
        let mut room = budget.max(1);
        let mut new = vec![0; left.len()];
        for (n, l) in new.iter_mut().zip(left.iter_mut()) {
            *n = (*l).min(room);
            *l -= *n;
            room -= *n;
            if room == 0 {
                break;
            }
        }
        let (ids, meta) = seqs.step(&new);
        greedy_step(runner, &ids, &meta)?;
    }
    Ok(())
}

/// How the decode loop runs its steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stepping {
    /// Each step's tokens reach the host before the next step is launched.
    Sequential,
    /// Step k+1 is launched (its ids fed from step k's tokens on the GPU) before the host
    /// collects step k's tokens, as the engine does.
    Overlapped,
}

/// What a decode run measured: seconds in all, and per step the GPU's busy time and its
/// idle time before the next step starts (the host gap the GPU sees).
struct DecodeTimes {
    secs: f64,
    busy: Vec<f64>,
    idle: Vec<f64>,
}

/// Batch of `b` sequences: prefill `prompt` tokens each (in chunks under the token budget),
/// then `steps` decode steps sampled on the GPU with `sampling` (the same for every row).
fn decode_run(
    runner: &mut Runner,
    (b, seq_len): (usize, usize),
    (prompt, steps): (usize, usize),
    stepping: Stepping,
    sampling: RowSampling,
) -> Result<DecodeTimes> {
    let budget = probes(runner)?.max_batched_tokens();
    let mut seqs = Seqs::new(b, seq_len.max(prompt + steps + 1), BLOCK_SIZE);
    seqs.start_at(runner, prompt, budget)?;
    let marks = probes(runner)?.event_marks(2 * steps)?;
    let rows = vec![sampling; b];
    let t0 = Instant::now();
    for k in 0..steps {
        let (ids, meta) = seqs.step(&vec![1; b]);
        marks.mark(2 * k)?;
        let feed = stepping == Stepping::Overlapped && k > 0;
        runner.launch_sampled(&ids, &meta, &rows, feed)?;
        marks.mark(2 * k + 1)?;
        if stepping == Stepping::Sequential || k > 0 {
            runner.collect_sampled()?;
        }
    }
    runner.collect_sampled()?;
    let secs = t0.elapsed().as_secs_f64();
    Ok(DecodeTimes {
        secs,
        busy: (0..steps)
            .map(|k| marks.seconds(2 * k, 2 * k + 1))
            .collect::<kr_engine::Result<_>>()?,
        idle: (0..steps.saturating_sub(1))
            .map(|k| marks.seconds(2 * k + 1, 2 * k + 2))
            .collect::<kr_engine::Result<_>>()?,
    })
}

/// The runner's GPU probes (this benchmark only runs on a GPU).
fn probes(runner: &mut Runner) -> Result<kr_engine::runner::GpuProbes<'_>> {
    runner.gpu_probes().ok_or_else(|| {
        crate::error::CliError::Usage("the GPU benchmark needs a CUDA device".into())
    })
}

/// GPU time of each kernel of one eager batch-1 decode step (events around every launch),
/// summed per kernel name, largest first: `(name, launches, microseconds)`. The plain GEMV
/// serves three projections, so its launches are named by role (see [`projection_role`]).
fn kernel_breakdown(
    runner: &mut Runner,
    prompt: usize,
    seq_len: usize,
) -> Result<Vec<(String, usize, f64)>> {
    let budget = probes(runner)?.max_batched_tokens();
    let mut seqs = Seqs::new(1, seq_len.max(prompt + 4), BLOCK_SIZE);
    seqs.start_at(runner, prompt, budget)?;
    let (ids, meta) = seqs.step(&[1]);
    greedy_step(runner, &ids, &meta)?;
    let (ids, meta) = seqs.step(&[1]);
    let launches = probes(runner)?.profile_step(&ids, &meta)?;
    let last_gemv = launches.iter().rposition(|(n, _)| n.starts_with("gemv"));
    let mut sums: Vec<(String, usize, f64)> = Vec::new();
    for (i, &(kernel, us)) in launches.iter().enumerate() {
        let previous = i.checked_sub(1).map_or("", |p| launches[p].0);
        let name = projection_role(kernel, previous, Some(i) == last_gemv);
        match sums.iter_mut().find(|s| s.0 == name) {
            Some(s) => {
                s.1 += 1;
                s.2 += us;
            }
            None => sums.push((name, 1, us)),
        }
    }
    sums.sort_by(|a, b| b.2.total_cmp(&a.2));
    Ok(sums)
}

/// `kernel` with the projection it computes where that is not in its name: the plain GEMV
/// after attention is the o projection, after gate|up the down projection, and the step's
/// last GEMV the vocabulary projection.
fn projection_role(kernel: &str, previous: &str, last_gemv: bool) -> String {
    let plain_gemv = kernel.starts_with("gemv")
        && !kernel.starts_with("gemv_qkv")
        && !kernel.starts_with("gemv_gate_up");
    let role = if !plain_gemv {
        None
    } else if last_gemv {
        Some("lm_head")
    } else if previous.starts_with("attention") {
        Some("o")
    } else if previous.starts_with("gemv_gate_up") {
        Some("down")
    } else {
        None
    };
    role.map_or_else(|| kernel.to_string(), |r| format!("{kernel} ({r})"))
}

/// What the bandwidth bound of a decode step is made of.
struct StepBytes {
    copy_bandwidth: f64,
    weights: f64,
    kv_per_token: f64,
}

impl StepBytes {
    /// Tokens/s at which `batch` sequences of `avg_ctx` tokens are bound by memory traffic.
    fn bound(&self, batch: usize, avg_ctx: f64) -> f64 {
        batch as f64 * self.copy_bandwidth
            / (self.weights + batch as f64 * avg_ctx * self.kv_per_token)
    }
}

/// Batch-1 decode in each mode: graphs on with overlapped steps (the engine's default),
/// overlap off, graphs off, and top-p sampling instead of greedy.
fn batch1_decode(runner: &mut Runner, spec: &Spec, bytes: &StepBytes) -> Result<Value> {
    let greedy = RowSampling::greedy();
    // A common non-greedy setting, to show what the sampler adds to a step.
    let top_p = RowSampling {
        temperature: 0.8,
        top_k: 0,
        top_p: 0.95,
        min_p: 0.0,
        uniform: 0.5,
        allowed: None,
    };
    let modes = [
        ("graphs_on", true, Stepping::Overlapped, greedy.clone()),
        (
            "graphs_on_overlap_off",
            true,
            Stepping::Sequential,
            greedy.clone(),
        ),
        ("graphs_off", false, Stepping::Overlapped, greedy),
        ("graphs_on_sampled_top_p", true, Stepping::Overlapped, top_p),
    ];
    let mut single = serde_json::Map::new();
    let steps = (spec.prompt_tokens, spec.gen_tokens);
    let bound = bytes.bound(1, spec.prompt_tokens as f64 + spec.gen_tokens as f64 / 2.0);
    for (name, graphs, stepping, sampling) in modes {
        runner.set_cuda_graphs(graphs);
        let run = decode_run(runner, (1, spec.seq_len), steps, stepping, sampling.clone())?;
        let tps = spec.gen_tokens as f64 / run.secs;
        let mean_gap = run.idle.iter().sum::<f64>() / run.idle.len().max(1) as f64;
        single.insert(
            name.into(),
            json!({
                "overlapped_steps": stepping == Stepping::Overlapped,
                "sampling": format!("{sampling:?}"),
                "tokens_per_second": tps,
                "ms_per_token": 1e3 / tps,
                "bandwidth_bound_tokens_per_second": bound,
                "fraction_of_bound": tps / bound,
                "median_step_gpu_us": median(&run.busy).unwrap_or(0.0) * 1e6,
                "median_host_gap_us": median(&run.idle).unwrap_or(0.0) * 1e6,
                "mean_host_gap_us": mean_gap * 1e6,
            }),
        );
    }
    runner.set_cuda_graphs(true);
    Ok(Value::Object(single))
}

/// Greedy decode at each of `spec.batch_sizes`, graphs on, overlapped steps.
fn batched_decode(runner: &mut Runner, spec: &Spec, bytes: &StepBytes) -> Result<Vec<Value>> {
    let mut batched = Vec::new();
    let avg_ctx = spec.prompt_tokens as f64 + spec.batch_decode_steps as f64 / 2.0;
    for &b in &spec.batch_sizes {
        let steps = (spec.prompt_tokens, spec.batch_decode_steps);
        let run = decode_run(
            runner,
            (b, spec.seq_len),
            steps,
            Stepping::Overlapped,
            RowSampling::greedy(),
        )?;
        let tps = (b * spec.batch_decode_steps) as f64 / run.secs;
        let bound = bytes.bound(b, avg_ctx);
        batched.push(json!({
            "batch": b,
            "tokens_per_second": tps,
            "median_step_gpu_us": median(&run.busy).unwrap_or(0.0) * 1e6,
            "bandwidth_bound_tokens_per_second": bound,
            "fraction_of_bound": tps / bound,
        }));
    }
    Ok(batched)
}

/// Prefill: the median TTFT of `spec.prefill_tokens`, and the speed of a 2048-token (or
/// budget-sized) prefill against the GEMM peak.
fn prefill(runner: &mut Runner, spec: &Spec, params: f64) -> Result<(f64, Value)> {
    let ttfts = (0..spec.repeat.max(3))
        .map(|_| ttft(runner, spec.prefill_tokens))
        .collect::<Result<Vec<_>>>()?;
    let ttft_s = median(&ttfts).unwrap_or(0.0);
    let big = 2048.min(probes(runner)?.max_batched_tokens());
    ttft(runner, big)?;
    let bigs = (0..3)
        .map(|_| ttft(runner, big))
        .collect::<Result<Vec<_>>>()?;
    let big_s = median(&bigs).unwrap_or(f64::NAN);
    let gemm_flops = probes(runner)?.gemm_peak(big)?;
    let flops = 2.0 * params * big as f64 / big_s;
    let report = json!({
        "tokens": big,
        "tokens_per_second": big as f64 / big_s,
        "tflops": flops / 1e12,
        "gemm_peak_tflops": gemm_flops / 1e12,
        "fraction_of_gemm_peak": flops / gemm_flops,
    });
    Ok((ttft_s, report))
}

/// Runs the whole benchmark and returns the report's `results` object.
fn measure(runner: &mut Runner, spec: &Spec, weights: &WeightSizes) -> Result<Value> {
    let weight_bytes = weights.decode_bytes;
    let c = runner.config().clone();
    let p = probes(runner)?;
    let (device, (dtype, _)) = (p.device_name(), p.dtype());
    let steps_allocated_before = p.allocations_since_load();
    let bw = p.copy_bandwidth()?;
    let kv_token_bytes = 2 * c.num_layers * c.num_kv_heads * p.kv_row_bytes(c.head_dim);
    // Warm-up: compile plans, capture graphs for the buckets used below. The prefill
    // measurement comes first, so that the decode runs after it share one prefill of the
    // prompt (see `Prefilled`).
    ttft(runner, spec.prefill_tokens)?;
    let (ttft_s, prefill) = prefill(runner, spec, weights.decode_params as f64)?;
    let warm = (spec.prompt_tokens, 4);
    let one = (1, spec.seq_len);
    decode_run(
        runner,
        one,
        warm,
        Stepping::Overlapped,
        RowSampling::greedy(),
    )?;
    let gemv_bw = probes(runner)?.gemv_bandwidth()?;
    let kernels = kernel_breakdown(runner, spec.prompt_tokens, spec.seq_len)?;
    let kernel_sum_us: f64 = kernels.iter().map(|k| k.2).sum();
    // The probes above allocate their own buffers; steps from here on must not.
    probes(runner)?.reset_allocation_count();
    let bytes = StepBytes {
        copy_bandwidth: bw,
        weights: weight_bytes as f64,
        kv_per_token: kv_token_bytes as f64,
    };
    let single = batch1_decode(runner, spec, &bytes)?;
    let batched = batched_decode(runner, spec, &bytes)?;
    let kv_blocks = runner.num_blocks() + 1;
    let p = probes(runner)?;
    Ok(json!({
        "device": device,
        "dtype": dtype,
        "kv_cache_bytes_per_token": kv_token_bytes,
        "weight_bytes": weight_bytes,
        "measured_copy_bandwidth_gb_per_s": bw / 1e9,
        "gemv_batch1_weight_gb_per_s": gemv_bw / 1e9,
        "ttft_seconds": { "prompt_tokens": spec.prefill_tokens, "median": ttft_s },
        "prefill": prefill,
        "decode_batch1": single,
        "decode_batch1_kernels": {
            "note": "GPU time of each kernel in one eager batch-1 decode step (events around every launch, launches queued behind a held stream so they run back to back); the graph step's GPU time minus this sum is the time between kernels",
            "kernel_time_sum_us": kernel_sum_us,
            "by_kernel": kernels.iter().map(|(name, n, us)| json!({
                "kernel": name, "launches": n, "total_us": us, "share": us / kernel_sum_us,
            })).collect::<Vec<_>>(),
        },
        "decode_batched": batched,
        "kv_blocks": kv_blocks,
        "device_allocations_during_steps": steps_allocated_before + p.allocations_since_load(),
        "workspace_peak_bytes": p.workspace_peak(),
    }))
}

/// What one decode step reads: bytes (quantised matrices as encoded, floats in the compute
/// dtype) and the number of values they hold.
struct WeightSizes {
    decode_bytes: usize,
    decode_params: usize,
}

/// The weights to benchmark: random ones of the shape `random:ARCH` names (seeded with
/// `--seed`, no tokenizer needed), or the model file's.
fn weights(model: &str, cfg: &EngineConfig, seed: u64) -> Result<ModelWeights> {
    match model.strip_prefix(kr_engine::RANDOM_PREFIX) {
        Some(arch) => {
            eprintln!("generating random {arch} weights …");
            Ok(kr_engine::random_weights(
                arch,
                cfg.dtype == DTypeChoice::F32,
                seed,
            )?)
        }
        None => Ok(kr_engine::load_model(std::path::Path::new(model))?.weights),
    }
}

pub fn bench_engine_gpu(args: BenchEngineArgs, c: &Config) -> Result<()> {
    let mut cfg = c.engine_config();
    let weights = weights(&c.model, &cfg, args.seed)?;
    let sizes = WeightSizes {
        decode_bytes: weights.decode_bytes(if cfg.dtype == DTypeChoice::F32 { 4 } else { 2 }),
        decode_params: weights.decode_params(),
    };
    let max_batch = args.batch_sizes.iter().copied().max().unwrap_or(1);
    // Prompts longer than a step's token budget are prefilled in chunks, as the engine does.
    let max_len = (args.prompt_tokens + args.gen_tokens as usize + 64)
        .max(args.prefill_tokens + 16)
        .max(2048 + 16);
    cfg.max_num_batched_tokens = args.prefill_tokens.max(2048);
    cfg.max_num_seqs = max_batch;
    eprintln!("loading onto the GPU …");
    let mut runner = Runner::place(&weights, &cfg.runner_config(max_len))?;
    drop(weights);
    let spec = Spec {
        prompt_tokens: args.prompt_tokens,
        gen_tokens: args.gen_tokens as usize,
        prefill_tokens: args.prefill_tokens,
        batch_sizes: args.batch_sizes.clone(),
        batch_decode_steps: 64,
        repeat: args.repeat,
        seq_len: args.prompt_tokens + args.gen_tokens as usize + 64,
    };
    eprintln!("measuring …");
    let results = measure(&mut runner, &spec, &sizes)?;
    let report = json!({
        "benchmark": "engine",
        "model": c.model,
        "device": "cuda",
        "machine": machine(),
        "commit": build_commit(),
        "checkout_commit": commit(),
        "command": super::command_line(),
        "unix_time": super::unix_time(),
        "settings": {"prompt_tokens": args.prompt_tokens, "gen_tokens": args.gen_tokens, "prefill_tokens": args.prefill_tokens, "batch_decode_steps": spec.batch_decode_steps, "repeat": args.repeat, "seed": args.seed, "cuda_graphs": cfg.cuda_graphs},
        "results": results,
    });
    super::emit_json(&report, args.out.as_deref())
}
