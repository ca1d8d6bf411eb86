//! The GPU engine benchmark behind `kr-serve bench engine --device cuda`: drives a
//! [`CudaModel`] directly with synthetic sequences (no scheduler, no HTTP) and reports prefill
//! and decode speed, TTFT, the memory-bandwidth bound and the host gap per decode step.
//! Timings are medians of repeats after a warm-up; it never asserts a speed.

use crate::backend::{CudaBackend, DType, RowSampling};
use crate::error::{driver, Result};
use crate::gemm::GemmType;
use crate::model::CudaModel;
use cudarc::driver::sys::CUevent_flags;
use kr_model::{AttnMeta, SeqAttn};
use serde_json::{json, Value};
use std::time::Instant;

/// What to measure.
#[derive(Debug, Clone)]
pub struct GpuBenchSpec {
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub prefill_tokens: usize,
    pub batch_sizes: Vec<usize>,
    pub batch_decode_steps: usize,
    pub repeat: usize,
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
                meta.slot_mapping.push(
                    table[p / self.block_size] * self.block_size as u32
                        + (p % self.block_size) as u32,
                );
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Seconds of `f`, measured on the host after the GPU finished.
fn timed(model: &CudaModel, f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let t0 = Instant::now();
    f()?;
    model.backend().gpu.synchronize()?;
    Ok(t0.elapsed().as_secs_f64())
}

/// Prefill of `len` tokens in one sequence; returns seconds to the first (greedy) token.
fn ttft(model: &mut CudaModel, len: usize) -> Result<f64> {
    let bs = model.options.block_size;
    let mut seqs = Seqs::new(1, len + 1, bs);
    let (ids, meta) = seqs.step(&[len]);
    let t0 = Instant::now();
    model.forward_greedy(&ids, &meta)?;
    Ok(t0.elapsed().as_secs_f64())
}

/// How the decode loop runs its steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stepping {
    /// Each step's tokens reach the host before the next step is launched.
    Sequential,
    /// Step k+1 is launched (its ids fed from step k's tokens on the GPU) before the host
    /// collects step k's tokens, as the engine does (SPEC P2).
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
    model: &mut CudaModel,
    b: usize,
    (prompt, steps): (usize, usize),
    stepping: Stepping,
    sampling: RowSampling,
) -> Result<DecodeTimes> {
    let bs = model.options.block_size;
    let mut seqs = Seqs::new(b, prompt + steps + 1, bs);
    let per_step = (model.options.max_num_batched_tokens / prompt.max(1)).max(1);
    for chunk in (0..b).collect::<Vec<_>>().chunks(per_step) {
        let mut new = vec![0; b];
        chunk.iter().for_each(|&i| new[i] = prompt);
        let (ids, meta) = seqs.step(&new);
        model.forward_greedy(&ids, &meta)?;
    }
    let gpu = model.backend().gpu.clone();
    let event = || {
        gpu.ctx
            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(driver("creating an event"))
    };
    let marks = (0..2 * steps)
        .map(|_| event())
        .collect::<Result<Vec<_>>>()?;
    let mark = |i: usize| {
        marks[i]
            .record(&gpu.stream)
            .map_err(driver("recording an event"))
    };
    let rows = vec![sampling; b];
    let t0 = Instant::now();
    for k in 0..steps {
        let (ids, meta) = seqs.step(&vec![1; b]);
        mark(2 * k)?;
        let feed = stepping == Stepping::Overlapped && k > 0;
        model.launch_sampled(&ids, &meta, &rows, feed)?;
        mark(2 * k + 1)?;
        if stepping == Stepping::Sequential || k > 0 {
            model.collect_sampled()?;
        }
    }
    model.collect_sampled()?;
    let secs = t0.elapsed().as_secs_f64();
    let between = |i: usize| -> Result<f64> {
        Ok(marks[i]
            .elapsed_ms(&marks[i + 1])
            .map_err(driver("reading an event"))? as f64
            / 1e3)
    };
    Ok(DecodeTimes {
        secs,
        busy: (0..steps).map(|k| between(2 * k)).collect::<Result<_>>()?,
        idle: (0..steps.saturating_sub(1))
            .map(|k| between(2 * k + 1))
            .collect::<Result<_>>()?,
    })
}

/// GPU time of each kernel of one eager batch-1 decode step (events around every launch),
/// summed per kernel name, largest first: `(name, launches, microseconds)`. The plain GEMV
/// serves three projections, so its launches are named by role (see [`projection_role`]).
fn kernel_breakdown(model: &mut CudaModel, prompt: usize) -> Result<Vec<(String, usize, f64)>> {
    let mut seqs = Seqs::new(1, prompt + 4, model.options.block_size);
    let (ids, meta) = seqs.step(&[prompt]);
    model.forward_greedy(&ids, &meta)?;
    let (ids, meta) = seqs.step(&[1]);
    model.forward_greedy(&ids, &meta)?;
    let (ids, meta) = seqs.step(&[1]);
    let launches = model.profile_step(&ids, &meta)?;
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

/// Device-to-device copy bandwidth (read + write bytes per second) over 2 GiB.
fn copy_bandwidth(be: &CudaBackend) -> Result<f64> {
    let bytes = 1usize << 30;
    let a = be.gpu.alloc(bytes)?;
    let b = be.gpu.alloc(bytes)?;
    let mut times = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        // SAFETY: both buffers hold `bytes`.
        unsafe {
            cudarc::driver::result::memcpy_dtod_async(
                b.ptr,
                a.ptr,
                bytes,
                be.gpu.stream.cu_stream(),
            )
        }
        .map_err(driver("copying"))?;
        be.gpu.synchronize()?;
        times.push(t0.elapsed().as_secs_f64());
    }
    Ok(2.0 * bytes as f64 / median(times))
}

/// bf16 (or f32) GEMM throughput of a `tokens × 4096 → 14336`-like product, in FLOP/s.
fn gemm_peak(model: &CudaModel, tokens: usize) -> Result<f64> {
    let be = model.backend();
    let c = model.config();
    let (rows, cols) = (c.intermediate_size, c.hidden_size);
    let e = be.dtype.size();
    let (w, x, y) = (
        be.gpu.alloc(rows * cols * e)?,
        be.gpu.alloc(tokens * cols * e)?,
        be.gpu.alloc(tokens * rows * e)?,
    );
    let ty = if be.dtype == DType::Bf16 {
        GemmType::Bf16
    } else {
        GemmType::F32
    };
    let lt = crate::gemm::Lt::new(&be.gpu)?;
    let mut times = Vec::new();
    for i in 0..6 {
        let t = timed(model, || {
            lt.matmul(
                &be.gpu,
                ty,
                y.ptr,
                x.ptr,
                w.ptr,
                (tokens, rows, cols),
                false,
            )
        })?;
        if i > 0 {
            times.push(t);
        }
    }
    Ok(2.0 * (tokens * rows * cols) as f64 / median(times))
}

/// Weight bytes per second the batch-1 GEMV kernel streams for the largest matrix shape of the
/// model (the FFN's `intermediate × hidden`), over 20 back-to-back products.
fn gemv_bandwidth(model: &CudaModel) -> Result<f64> {
    use kr_model::Backend;
    let be = model.backend();
    let c = model.config();
    let (rows, cols) = (c.intermediate_size, c.hidden_size);
    let w = be.load_weight(&kr_model::RawTensor::from_f32(
        "probe",
        rows,
        cols,
        &vec![0.01; rows * cols],
    ));
    let x = be.upload_tensor(1, cols, &vec![0.5; cols]);
    be.linear(&x, &w, None);
    let secs = timed(model, || {
        for _ in 0..20 {
            be.linear(&x, &w, None);
        }
        Ok(())
    })?;
    if let Some(e) = be.take_error() {
        return Err(e);
    }
    Ok(20.0 * (rows * cols * be.dtype.size()) as f64 / secs)
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
fn batch1_decode(
    model: &mut CudaModel,
    spec: &GpuBenchSpec,
    bytes: &StepBytes,
) -> Result<serde_json::Map<String, Value>> {
    let greedy = RowSampling::greedy();
    // A common non-greedy setting, to show what the sampler adds to a step.
    let top_p = RowSampling {
        temperature: 0.8,
        top_k: 0,
        top_p: 0.95,
        min_p: 0.0,
        uniform: 0.5,
    };
    let modes = [
        ("graphs_on", true, Stepping::Overlapped, greedy),
        ("graphs_on_overlap_off", true, Stepping::Sequential, greedy),
        ("graphs_off", false, Stepping::Overlapped, greedy),
        ("graphs_on_sampled_top_p", true, Stepping::Overlapped, top_p),
    ];
    let mut single = serde_json::Map::new();
    let steps = (spec.prompt_tokens, spec.gen_tokens);
    let bound = bytes.bound(1, spec.prompt_tokens as f64 + spec.gen_tokens as f64 / 2.0);
    for (name, graphs, stepping, sampling) in modes {
        model.options.cuda_graphs = graphs;
        let run = decode_run(model, 1, steps, stepping, sampling)?;
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
                "median_step_gpu_us": median(run.busy) * 1e6,
                "median_host_gap_us": median(run.idle) * 1e6,
                "mean_host_gap_us": mean_gap * 1e6,
            }),
        );
    }
    model.options.cuda_graphs = true;
    Ok(single)
}

/// Greedy decode at each of `spec.batch_sizes`, graphs on, overlapped steps.
fn batched_decode(
    model: &mut CudaModel,
    spec: &GpuBenchSpec,
    bytes: &StepBytes,
) -> Result<Vec<Value>> {
    let mut batched = Vec::new();
    let avg_ctx = spec.prompt_tokens as f64 + spec.batch_decode_steps as f64 / 2.0;
    for &b in &spec.batch_sizes {
        let steps = (spec.prompt_tokens, spec.batch_decode_steps);
        let run = decode_run(model, b, steps, Stepping::Overlapped, RowSampling::greedy())?;
        let tps = (b * spec.batch_decode_steps) as f64 / run.secs;
        let bound = bytes.bound(b, avg_ctx);
        batched.push(json!({
            "batch": b,
            "tokens_per_second": tps,
            "median_step_gpu_us": median(run.busy) * 1e6,
            "bandwidth_bound_tokens_per_second": bound,
            "fraction_of_bound": tps / bound,
        }));
    }
    Ok(batched)
}

/// Runs the whole benchmark and returns the report's `results` object.
pub fn run(model: &mut CudaModel, spec: &GpuBenchSpec, weight_bytes: usize) -> Result<Value> {
    let c = model.config().clone();
    let steps_allocated_before = model.allocations_since_load();
    let bw = copy_bandwidth(model.backend())?;
    let kv_token_bytes =
        2 * c.num_layers * c.num_kv_heads * c.head_dim * model.backend().dtype.size();
    let params = weight_bytes as f64 / model.backend().dtype.size() as f64;
    // Warm-up: compile plans, capture graphs for the buckets used below.
    ttft(model, spec.prefill_tokens)?;
    let warm = (spec.prompt_tokens, 4);
    decode_run(model, 1, warm, Stepping::Overlapped, RowSampling::greedy())?;

    let mut ttfts = Vec::new();
    for _ in 0..spec.repeat.max(3) {
        ttfts.push(ttft(model, spec.prefill_tokens)?);
    }
    let ttft_s = median(ttfts);
    let prefill_big = 2048.min(model.options.max_num_batched_tokens);
    ttft(model, prefill_big)?;
    let prefill_s = median(
        (0..3)
            .map(|_| ttft(model, prefill_big))
            .collect::<Result<Vec<_>>>()?,
    );
    let gemm_flops = gemm_peak(model, prefill_big)?;
    let gemv_bw = gemv_bandwidth(model)?;
    let kernels = kernel_breakdown(model, spec.prompt_tokens)?;
    let kernel_sum_us: f64 = kernels.iter().map(|k| k.2).sum();
    // The probes above (bandwidth, GEMM, the held stream of the kernel breakdown) allocate
    // their own buffers; steps from here on must not.
    model.reset_allocation_count();
    let prefill_flops = 2.0 * params * prefill_big as f64 / prefill_s;

    let bytes = StepBytes {
        copy_bandwidth: bw,
        weights: weight_bytes as f64,
        kv_per_token: kv_token_bytes as f64,
    };
    let single = batch1_decode(model, spec, &bytes)?;
    let batched = batched_decode(model, spec, &bytes)?;
    Ok(json!({
        "device": model.backend().gpu.info.name,
        "dtype": format!("{:?}", model.backend().dtype),
        "weight_bytes": weight_bytes,
        "measured_copy_bandwidth_gb_per_s": bw / 1e9,
        "gemv_batch1_weight_gb_per_s": gemv_bw / 1e9,
        "ttft_seconds": { "prompt_tokens": spec.prefill_tokens, "median": ttft_s },
        "prefill": {
            "tokens": prefill_big,
            "tokens_per_second": prefill_big as f64 / prefill_s,
            "tflops": prefill_flops / 1e12,
            "gemm_peak_tflops": gemm_flops / 1e12,
            "fraction_of_gemm_peak": prefill_flops / gemm_flops,
        },
        "decode_batch1": single,
        "decode_batch1_kernels": {
            "note": "GPU time of each kernel in one eager batch-1 decode step (events around every launch, launches queued behind a held stream so they run back to back); the graph step's GPU time minus this sum is the time between kernels",
            "kernel_time_sum_us": kernel_sum_us,
            "by_kernel": kernels.iter().map(|(name, n, us)| json!({
                "kernel": name, "launches": n, "total_us": us, "share": us / kernel_sum_us,
            })).collect::<Vec<_>>(),
        },
        "decode_batched": batched,
        "kv_blocks": model.num_blocks,
        "device_allocations_during_steps": steps_allocated_before + model.allocations_since_load(),
        "workspace_peak_bytes": model.backend().workspace_peak(),
    }))
}
