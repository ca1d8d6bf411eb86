//! A model on the GPU: the decoder, its paged KV cache sized from free memory, and CUDA graphs
//! for decode steps (one per batch-size bucket, captured on first use, replayed after).
//!
//! Invariants: a graph is only replayed for a pure-decode step padded to its bucket, after
//! `begin_step` uploaded that step's metadata; the graph's logits tensor stays owned by the
//! graph entry, so no later allocation can overlap it while it is being read. Any CUDA error
//! in a step is returned as `Err` (the backend records it instead of panicking).

use crate::backend::{
    CudaBackend, CudaKvCache, CudaLimits, CudaTensor, DType, RowSampling, SampledTokens,
};
use crate::device::Gpu;
use crate::error::{driver, CudaError, Result};
use crate::meta::{is_long_decode, is_pure_decode, pad_decode};
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::CudaGraph;
use kr_model::{AttnMeta, Backend, Decoder, ModelConfig, ModelWeights};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Batch-size buckets of decode graphs.
pub const GRAPH_BUCKETS: [usize; 10] = [1, 2, 4, 8, 16, 32, 64, 128, 192, 256];

/// The graph bucket a decode step of `tokens` tokens is padded to (`None`: past the largest,
/// it runs without a graph).
fn graph_bucket(tokens: usize) -> Option<usize> {
    GRAPH_BUCKETS.iter().copied().find(|&b| b >= tokens)
}

/// How to place a model on a GPU.
#[derive(Debug, Clone)]
pub struct CudaModelOptions {
    pub ordinal: usize,
    pub dtype: DType,
    /// Share of the GPU's memory the process may use in total (weights, cache, workspace).
    pub gpu_memory_fraction: f64,
    pub block_size: usize,
    pub max_num_batched_tokens: usize,
    pub max_num_seqs: usize,
    pub max_model_len: usize,
    /// Exact number of KV blocks instead of sizing from memory.
    pub num_kv_blocks: Option<usize>,
    pub cuda_graphs: bool,
    /// Keys and values stored as fp8 (E4M3) with a scale per (token, kv head): half the
    /// bytes of bf16 (`backend::kv8`; bf16 compute, head_dim 64 or 128, compute 8.0+).
    pub kv_fp8: bool,
    /// A sequence's numbers do not depend on the batch: every projection of up to
    /// `max_num_seqs` tokens on the tensor-core GEMV (8 tokens a launch, each token's sums in
    /// the same order), decode attention always split by context length alone. Prefill chunks
    /// of more tokens keep cuBLASLt; the scheduler keeps those chunks the same.
    pub batch_invariant: bool,
}

struct DecodeGraph {
    graph: CudaGraph,
    logits: CudaTensor,
}

// SAFETY: CUDA graph handles may be used from any thread that binds the context (begin_step
// does, before every launch); the model, and so its graphs, is used by one thread at a time.
unsafe impl Send for DecodeGraph {}

pub struct CudaModel {
    decoder: Decoder<CudaBackend>,
    cache: CudaKvCache,
    /// Decode graphs by (batch bucket, long-context decode): see `meta::LONG_DECODE_CONTEXT`.
    graphs: HashMap<(usize, bool), DecodeGraph>,
    /// Some expert block routes on the host (quantised or odd-shaped experts: see
    /// `backend::moe`), reading the router's output in the middle of a step, so the model's
    /// steps are never captured in graphs, whatever `options` says.
    experts_on_host: bool,
    pub options: CudaModelOptions,
    pub num_blocks: usize,
    /// Device allocations made by the end of loading; any more means a step allocated.
    pub allocations_at_load: u64,
    /// Steps launched by `launch_sampled` whose tokens the host has not collected, oldest
    /// first (at most two: the backend's step slots).
    outstanding: VecDeque<SampledTokens>,
    /// The step launched last, when it was a `launch_sampled` one (what `feed` reads).
    last_sampled: Option<SampledTokens>,
}

/// Workspace bytes for steps of up to `tokens` tokens and `seqs` sampled rows: the live
/// activations of one layer (twice, for fragmentation), plus logits in the dtype and in f32.
fn workspace_bytes(c: &ModelConfig, tokens: usize, seqs: usize, elem: usize) -> usize {
    let q = c.num_heads * c.head_dim;
    let kv = c.num_kv_heads * c.head_dim;
    let per_token = 4 * c.hidden_size + 3 * q + 2 * kv + 3 * c.intermediate_size;
    let logits = seqs * c.vocab_size * (elem + 4);
    2 * tokens * per_token * elem + 2 * logits + (64 << 20)
}

/// Workspace a token of an expert model's step takes for device routing (`backend::moe`):
/// its chosen experts' ids and weights (4 bytes each) and their gate·up activations.
fn moe_bytes_per_token(w: &ModelWeights, elem: usize) -> usize {
    let block = |m: &kr_model::weights::MoeWeights| {
        let ff = m.experts.first().map_or(0, |e| e.gate.rows);
        m.top_k * (8 + ff * elem)
    };
    w.layers
        .iter()
        .filter_map(|l| l.moe.as_ref())
        .map(block)
        .max()
        .unwrap_or(0)
}

/// Workspace the decode attention's partial states take in batch-invariant mode, where every
/// (sequence, kv head) pair of a step of `max_num_seqs` (as padded) always has the most splits.
fn invariant_partial_bytes(c: &ModelConfig, opts: &CudaModelOptions) -> usize {
    if !opts.batch_invariant {
        return 0;
    }
    let seqs = graph_bucket(opts.max_num_seqs).unwrap_or(opts.max_num_seqs);
    let splits = crate::backend::attention::LONG_DECODE_MAX_SPLITS;
    seqs * c.num_kv_heads * splits * (c.num_heads / c.num_kv_heads) * (c.head_dim + 2) * 4
}

/// Whether an fp8 KV cache can hold this model here: bf16 compute, head_dim 64 or 128 and
/// compute capability 8.0+ (what its kernels are written for).
fn kv_fp8_supported(c: &ModelConfig, dtype: DType, cc: (i32, i32)) -> Result<()> {
    refusal(
        "an fp8 KV cache (--kv-cache-dtype fp8)",
        bf16_kernels_gap(dtype, c.head_dim, cc),
        "use --kv-cache-dtype auto",
    )
}

/// What keeps the bf16 tensor-core and tiled kernels from a model: another compute type, a
/// head_dim other than 64 or 128, compute capability below 8.0; `None` when nothing does.
fn bf16_kernels_gap(dtype: DType, head_dim: usize, cc: (i32, i32)) -> Option<String> {
    if dtype != DType::Bf16 {
        Some(format!("{dtype:?} compute (use --dtype bf16)"))
    } else if head_dim != 64 && head_dim != 128 {
        Some(format!("head_dim {head_dim} (64 and 128 are)"))
    } else if cc.0 < 8 {
        Some(format!("compute capability {}.{} (8.0+ is)", cc.0, cc.1))
    } else {
        None
    }
}

/// `Ok` without a reason, else the error naming `feature`, the reason and what to do instead.
fn refusal(feature: &str, why: Option<String>, instead: &str) -> Result<()> {
    match why {
        Some(why) => Err(CudaError::Unsupported(format!(
            "{feature} with {why}; {instead}"
        ))),
        None => Ok(()),
    }
}

/// Whether batch-invariant kernels cover this model: bf16 compute on compute capability
/// 8.0+ (the tensor-core GEMV), unquantised dense weights whose widths are multiples of 32 and
/// row counts multiples of 16, head_dim 64 or 128 (the tiled decode kernels), a bf16 cache.
fn batch_invariant_supported(
    w: &ModelWeights,
    opts: &CudaModelOptions,
    cc: (i32, i32),
) -> Result<()> {
    let c = &w.config;
    let (q_dim, kv_dim) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
    let rows = [
        q_dim,
        kv_dim,
        c.hidden_size,
        c.intermediate_size,
        c.vocab_size,
    ];
    let why = if let Some(gap) = bf16_kernels_gap(opts.dtype, c.head_dim, cc) {
        Some(gap)
    } else if opts.kv_fp8 {
        Some("an fp8 KV cache (use --kv-cache-dtype auto)".to_string())
    } else if crate::tuning::switched_off("KR_CUDA_DECODE_TILES") {
        Some("KR_CUDA_DECODE_TILES=0 (its split counts follow the batch)".to_string())
    } else if w.has_experts() || w.layer_matrices().any(|t| t.ty.is_quantized()) {
        Some("quantised weights or experts (bf16 dense weights are)".to_string())
    } else if c.hidden_size % 32 != 0
        || c.intermediate_size % 32 != 0
        || rows.iter().any(|r| r % 16 != 0)
    {
        Some("widths that are not multiples of 32 or row counts not multiples of 16".to_string())
    } else {
        None
    };
    refusal(
        "batch-invariant mode (--batch-invariant)",
        why,
        "run without it",
    )
}

/// Bytes of the weight arena: every matrix as the device stores it, each aligned.
fn arena_bytes(w: &ModelWeights, dtype: DType) -> usize {
    let size = |t: &kr_model::RawTensor| {
        crate::backend::arena_size(crate::backend::device_bytes(t, dtype))
    };
    let layers: usize = w.layer_matrices().map(size).sum();
    layers + size(&w.embedding) + w.lm_head.as_ref().map_or(0, size)
}

impl CudaModel {
    pub fn load(weights: &ModelWeights, opts: CudaModelOptions) -> Result<Self> {
        let c = &weights.config;
        if let Some(what) = weights.beyond_the_gpu_kernels() {
            return Err(CudaError::Unsupported(format!(
                "{what}; run the model with --device cpu"
            )));
        }
        let gpu = Arc::new(Gpu::open(opts.ordinal)?);
        if opts.kv_fp8 {
            kv_fp8_supported(c, opts.dtype, gpu.info.compute_capability)?;
        }
        if opts.batch_invariant {
            batch_invariant_supported(weights, &opts, gpu.info.compute_capability)?;
        }
        let max_seqs = opts.max_num_seqs.max(*GRAPH_BUCKETS.last().unwrap_or(&1));
        let max_tokens = opts.max_num_batched_tokens.max(max_seqs);
        let limits = CudaLimits {
            max_tokens,
            max_seqs,
            max_blocks_per_seq: opts.max_model_len.div_ceil(opts.block_size),
            workspace_bytes: workspace_bytes(c, max_tokens, max_seqs, opts.dtype.size())
                + max_tokens * moe_bytes_per_token(weights, opts.dtype.size())
                + invariant_partial_bytes(c, &opts),
            heads_per_kv: c.num_heads / c.num_kv_heads,
            vocab_size: c.vocab_size,
            kv_fp8: opts.kv_fp8,
            batch_invariant_tokens: match opts.batch_invariant {
                true => graph_bucket(opts.max_num_seqs).unwrap_or(opts.max_num_seqs),
                false => 0,
            },
        };
        let backend = CudaBackend::new(gpu.clone(), opts.dtype, limits)?;
        backend.reserve_weights(arena_bytes(weights, opts.dtype))?;
        let decoder = Decoder::new(backend, weights);
        decoder
            .backend()
            .prepare_rope(&kr_model::Rope::from_config(c));
        if let Some(local) = c.local_rope_config() {
            decoder
                .backend()
                .prepare_rope(&kr_model::Rope::from_config(&local));
        }
        if let Some(e) = decoder.backend().take_error() {
            return Err(e);
        }
        let row_bytes = decoder.backend().kv_row_bytes(c.head_dim);
        let block_bytes = 2 * c.num_layers * opts.block_size * c.num_kv_heads * row_bytes;
        let num_blocks = match opts.num_kv_blocks {
            Some(n) => n,
            None => {
                let (free, total) = gpu.memory()?;
                let allowed = (total as f64 * opts.gpu_memory_fraction) as usize;
                let budget = allowed.saturating_sub(total - free);
                budget / block_bytes
            }
        };
        if num_blocks == 0 {
            return Err(CudaError::OutOfMemory(format!(
                "no room for a KV block of {} MiB after the weights; raise --gpu-memory-fraction",
                block_bytes >> 20
            )));
        }
        let cache = decoder.new_kv_cache(num_blocks, opts.block_size);
        if let Some(e) = decoder.backend().take_error() {
            return Err(e);
        }
        gpu.synchronize()?;
        let experts_on_host = decoder.routes_experts_on_host();
        Ok(Self {
            allocations_at_load: gpu.allocations.load(std::sync::atomic::Ordering::Relaxed),
            decoder,
            cache,
            graphs: HashMap::new(),
            experts_on_host,
            options: opts,
            num_blocks,
            outstanding: VecDeque::new(),
            last_sampled: None,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.decoder.config
    }

    pub fn backend(&self) -> &CudaBackend {
        self.decoder.backend()
    }

    /// Device allocations made since loading (inside steps, or by graph capture helpers).
    pub fn allocations_since_load(&self) -> u64 {
        self.backend()
            .gpu
            .allocations
            .load(std::sync::atomic::Ordering::Relaxed)
            - self.allocations_at_load
    }

    /// Counts later allocations from now (the benchmark's own buffers are not the model's).
    pub fn reset_allocation_count(&mut self) {
        self.allocations_at_load = self
            .backend()
            .gpu
            .allocations
            .load(std::sync::atomic::Ordering::Relaxed);
    }

    /// Fails while `launch_sampled` steps are outstanding: a step run in between would
    /// read or clear their slots (collect them first).
    pub fn no_steps_outstanding(&self) -> Result<()> {
        match self.outstanding.len() {
            0 => Ok(()),
            n => Err(CudaError::Unsupported(format!(
                "a synchronous step while {n} launched step(s) are not collected"
            ))),
        }
    }

    /// Logits of `meta.logit_rows`, row-major `[rows, vocab]` in f32.
    pub fn forward(&mut self, ids: &[u32], meta: &AttnMeta) -> Result<Vec<f32>> {
        self.no_steps_outstanding()?;
        let vocab = self.config().vocab_size;
        let n = meta.logit_rows.len();
        self.with_logits(ids, meta, |be, l| {
            let mut host = l.map(|l| be.to_host(l)).unwrap_or_default();
            host.truncate(n * vocab);
            host
        })
    }

    /// Forgets steps launched and not collected (after a failed step: their tokens are not
    /// wanted; the next step waits for the stream as any step does).
    pub fn discard_outstanding(&mut self) {
        self.outstanding.clear();
        self.last_sampled = None;
    }

    /// Logits of `meta.logit_rows` and the final-normed hidden states of `hidden_rows`
    /// (see `Decoder::forward_with_hidden`), both in f32; always eager (no graph).
    pub fn forward_with_hidden(
        &mut self,
        ids: &[u32],
        meta: &AttnMeta,
        hidden_rows: &[usize],
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        self.no_steps_outstanding()?;
        self.last_sampled = None;
        let out = self
            .decoder
            .forward_with_hidden(ids, meta, hidden_rows, &mut self.cache);
        self.error()?;
        Ok(out)
    }

    /// The greedy token of each of `meta.logit_rows`, chosen on the GPU.
    pub fn forward_greedy(&mut self, ids: &[u32], meta: &AttnMeta) -> Result<Vec<u32>> {
        self.no_steps_outstanding()?;
        let n = meta.logit_rows.len();
        self.with_logits(ids, meta, |be, l| {
            let mut ids = l.map(|l| be.argmax(l)).unwrap_or_default();
            ids.truncate(n);
            ids
        })
    }

    /// Queues a step that samples one token for each of `meta.logit_rows` on the GPU with
    /// `rows[i]`, without waiting for it; [`CudaModel::collect_sampled`] returns its tokens
    /// (the host prepares and launches step N+1 while the GPU runs step N). With `feed`, the step's input ids are
    /// the tokens of the step launched just before, which must have been a `launch_sampled`
    /// step with one sampled row per id here: the host need not know them. At most two steps
    /// are outstanding.
    pub fn launch_sampled(
        &mut self,
        ids: &[u32],
        meta: &AttnMeta,
        rows: &[RowSampling],
        feed: bool,
    ) -> Result<()> {
        self.launch_sampled_with(ids, meta, || rows, feed)
    }

    /// [`CudaModel::launch_sampled`] with the rows made by `rows` after the forward pass is
    /// queued (graph launched or kernels enqueued), so that the host's work on them overlaps
    /// the GPU's.
    pub fn launch_sampled_with<R: AsRef<[RowSampling]>>(
        &mut self,
        ids: &[u32],
        meta: &AttnMeta,
        rows: impl FnOnce() -> R,
        feed: bool,
    ) -> Result<()> {
        if self.outstanding.len() >= 2 {
            return Err(CudaError::Unsupported(
                "a third step in flight (collect one first)".into(),
            ));
        }
        if feed {
            match self.last_sampled {
                Some(prev) if prev.rows() == ids.len() => self.backend().feed_ids_from(prev),
                _ => {
                    return Err(CudaError::Unsupported(format!(
                        "feeding {} ids from a step that did not sample as many rows just before",
                        ids.len()
                    )))
                }
            }
        }
        let wanted = meta.logit_rows.len();
        let step = self.with_logits(ids, meta, |be, l| {
            l.map(|l| {
                let rows = rows();
                let rows = rows.as_ref();
                be.sample_async(l, &rows[..wanted.min(rows.len())])
            })
        })?;
        self.last_sampled = step;
        self.outstanding.extend(step);
        Ok(())
    }

    /// The tokens of the oldest step queued by [`CudaModel::launch_sampled`] (empty when
    /// none is outstanding), waiting for it on the GPU.
    pub fn collect_sampled(&mut self) -> Result<Vec<u32>> {
        let Some(step) = self.outstanding.pop_front() else {
            return Ok(Vec::new());
        };
        let tokens = self.backend().collect_tokens(step);
        self.error()?;
        Ok(tokens)
    }

    /// GPU time of every kernel of one eager step, `(name, µs)` in launch order. The
    /// launches queue behind a held stream and then run back to back, so the host's launch
    /// latency is not counted (see `backend::profile`).
    pub fn profile_step(
        &mut self,
        ids: &[u32],
        meta: &AttnMeta,
    ) -> Result<Vec<(&'static str, f64)>> {
        self.no_steps_outstanding()?;
        self.last_sampled = None;
        let be = self.decoder.backend();
        let hold = be.hold_stream()?;
        be.set_profiling(true);
        be.begin_step(ids, meta);
        let logits = self.decoder.forward_device(ids, meta, &mut self.cache);
        let released = be.release_stream(&hold);
        let timings = be.take_profile();
        be.set_profiling(false);
        drop(logits);
        released?;
        self.error()?;
        timings
    }

    /// Runs the step (through a graph when it is a decode step that fits a bucket) and hands
    /// the logits tensor (none when the step samples nothing) to `read`.
    fn with_logits<R>(
        &mut self,
        ids: &[u32],
        meta: &AttnMeta,
        read: impl FnOnce(&CudaBackend, Option<&CudaTensor>) -> R,
    ) -> Result<R> {
        self.last_sampled = None;
        let bucket = graph_bucket(ids.len());
        let out = match bucket {
            Some(b)
                if self.options.cuda_graphs && !self.experts_on_host && is_pure_decode(meta) =>
            {
                let (pids, pmeta) = pad_decode(ids, meta, b);
                self.decoder.backend().begin_step(&pids, &pmeta);
                self.error()?;
                let key = (b, is_long_decode(meta));
                if !self.graphs.contains_key(&key) {
                    let g = self.capture(&pids, &pmeta)?;
                    self.graphs.insert(key, g);
                }
                let g = &self.graphs[&key];
                g.graph
                    .launch()
                    .map_err(driver("launching a decode graph"))?;
                read(self.decoder.backend(), Some(&g.logits))
            }
            _ => {
                self.decoder.backend().begin_step(ids, meta);
                let logits = self.decoder.forward_device(ids, meta, &mut self.cache);
                read(self.decoder.backend(), logits.as_ref())
            }
        };
        self.error()?;
        Ok(out)
    }

    fn error(&self) -> Result<()> {
        match self.decoder.backend().take_error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Records one decode step of the padded batch into a graph (nothing runs yet).
    fn capture(&mut self, ids: &[u32], meta: &AttnMeta) -> Result<DecodeGraph> {
        let stream = self.decoder.backend().gpu.stream.clone();
        stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(driver("starting graph capture"))?;
        let logits = self.decoder.forward_device(ids, meta, &mut self.cache);
        let graph = stream.end_capture(CUgraphInstantiate_flags(0));
        self.error()?;
        let graph = graph
            .map_err(driver("finishing graph capture"))?
            .ok_or_else(|| CudaError::Unsupported("an empty decode graph".into()))?;
        let logits =
            logits.ok_or_else(|| CudaError::Unsupported("a decode step without logits".into()))?;
        Ok(DecodeGraph { graph, logits })
    }
}
