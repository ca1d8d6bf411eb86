//! [`CudaBackend`]: the Backend operations as CUDA kernels on one stream.
//!
//! Invariants: activations are row-major `[tokens, features]` in the compute dtype (f32 or
//! bf16) and live in the step workspace ([`crate::pool`]); weights are stored in the compute
//! dtype, norms / biases / RoPE frequencies in f32. Step metadata is uploaded once by
//! `begin_step` and read by kernels from fixed addresses. The first failure is kept (sticky)
//! and turns every later launch into a no-op, so a step never panics; the model checks
//! [`CudaBackend::take_error`] after each step.

use crate::device::{DeviceBuffer, Gpu};
use crate::error::{driver, CudaError, Result};
use crate::gemm::{GemmType, Lt};
use crate::meta::{pack, tile_q, used_ranges, MetaLayout, StepCounts};
use crate::pool::{FirstFit, SharedPool};
use cudarc::driver::LaunchConfig;
use kr_model::quant::GgmlType;
use kr_model::{AttnMeta, Backend, KvLayout, RawTensor, Rope, RopeStyle};
use std::cell::{Cell, RefCell};
use std::sync::{Arc, Mutex};

/// Element type of activations, weights and the KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    Bf16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::Bf16 => 2,
        }
    }
    fn suffix(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }
    fn gemm(self) -> GemmType {
        match self {
            Self::F32 => GemmType::F32,
            Self::Bf16 => GemmType::Bf16,
        }
    }
}

/// Rows at or below which `linear` uses the weight-streaming GEMV kernel instead of cuBLASLt.
pub const GEMV_MAX_ROWS: usize = 8;
/// The GEMV kernel for each token count 1..=8.
pub(super) const GEMV_KERNELS: [&str; GEMV_MAX_ROWS] = [
    "gemv1", "gemv2", "gemv3", "gemv4", "gemv5", "gemv6", "gemv7", "gemv8",
];

/// An activation in the step workspace; its block returns to the pool on drop.
pub struct CudaTensor {
    pub ptr: u64,
    pub rows: usize,
    pub cols: usize,
    offset: usize,
    bytes: usize,
    pool: Option<SharedPool>,
    /// The folded-norm slot holding the sums of squares of these rows, 0 for none, and the
    /// embed that handed it out (see `backend::norm_fold`).
    norm_sums: u64,
    norm_epoch: u64,
}

impl Drop for CudaTensor {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            if let Ok(mut p) = pool.lock() {
                p.free(self.offset, self.bytes);
            }
        }
    }
}

pub struct CudaVector {
    buf: DeviceBuffer,
    /// Every element is 1 (a norm gain folded into the weights after it).
    unit: bool,
}

/// K and V of every layer: `[layer][k|v][slot][kv_heads * head_dim]`.
/// Per layer: the keys of every slot, then the values (elements of the compute dtype, or
/// E4M3 codes in an fp8 cache), then for fp8 one f32 scale per (slot, kv head) for the keys and
/// one for the values (see `backend::kv8`).
pub struct CudaKvCache {
    buf: DeviceBuffer,
    pub layout: KvLayout,
    /// Bytes of one layer's keys (and of its values).
    half_layer_bytes: usize,
    /// Bytes of one layer's key scales (and value scales): 0 unless fp8.
    scale_bytes: usize,
}

impl CudaKvCache {
    fn k(&self, layer: usize) -> u64 {
        self.buf.ptr + (2 * layer * (self.half_layer_bytes + self.scale_bytes)) as u64
    }
    fn v(&self, layer: usize) -> u64 {
        self.k(layer) + self.half_layer_bytes as u64
    }
    fn k_scales(&self, layer: usize) -> u64 {
        self.v(layer) + self.half_layer_bytes as u64
    }
    fn v_scales(&self, layer: usize) -> u64 {
        self.k_scales(layer) + self.scale_bytes as u64
    }
    /// Whether the cache holds fp8 codes and scales.
    fn fp8(&self) -> bool {
        self.scale_bytes > 0
    }
}

/// Sizes the backend is built for.
#[derive(Debug, Clone, Copy)]
pub struct CudaLimits {
    pub max_tokens: usize,
    pub max_seqs: usize,
    pub max_blocks_per_seq: usize,
    pub workspace_bytes: usize,
    /// Query heads per kv head (sets the attention tile; see `meta::tile_q`).
    pub heads_per_kv: usize,
    /// Logits per row (the device sampler's masks of allowed tokens are this many bits).
    pub vocab_size: usize,
    /// KV caches hold fp8 codes with scales (`backend::kv8`).
    pub kv_fp8: bool,
    /// Batch-invariant mode: projections of up to this many tokens (a decode step's most,
    /// padded to its graph bucket) and decode attention computed the same way for any batch
    /// (see `backend::gemv_mma` and `backend::attention`); 0: off.
    pub batch_invariant_tokens: usize,
}

pub struct CudaBackend {
    pub gpu: Arc<Gpu>,
    lt: Lt,
    pub dtype: DType,
    pool: SharedPool,
    workspace: DeviceBuffer,
    meta_layout: MetaLayout,
    meta_dev: DeviceBuffer,
    /// Pinned and device buffers of the steps in flight (see `backend::step_slots`).
    step_slots: RefCell<step_slots::StepSlots>,
    /// Sampled tokens the next `begin_step` copies over its first input ids: (device
    /// address, count). See [`CudaBackend::feed_ids_from`].
    feed: Cell<Option<(u64, usize)>>,
    heads_per_kv: usize,
    step: Cell<StepCounts>,
    step_rows: RefCell<Vec<usize>>,
    /// RoPE frequencies on the device, one buffer per distinct table (a model with local
    /// layers, Gemma 3's, rotates with two).
    inv_freq: RefCell<Vec<(Vec<f32>, DeviceBuffer)>>,
    weights: RefCell<Option<WeightArena>>,
    profile: RefCell<Option<profile::Timings>>,
    /// Launch kernels with programmatic dependent launch (see `backend::launch`).
    pdl: bool,
    /// Zeroed arrival counters of the split-K decode attention (see `backend::attention`).
    split_counters: DeviceBuffer,
    /// Most key splits of the split-K decode attention: `KR_CUDA_DECODE_SPLITS` (1 to 16,
    /// default 16; 1 always takes the one-block-per-pair kernel).
    max_decode_splits: usize,
    long_decode_splits: Cell<attention::LongDecodeSplits>,
    /// Which split decode kernel runs (tiled or generic; cluster or global merge).
    decode_kernels: Cell<attention::DecodeKernels>,
    /// KV caches hold fp8 codes with scales (`kv8`).
    kv_fp8: bool,
    /// Kernels not launched at all (`KR_CUDA_SKIP_KERNELS`, for ablation timing only: the
    /// results are wrong). Empty in normal use.
    skip_kernels: Vec<String>,
    /// Projections of this many tokens up to `mma_gemv_max_tokens` run on tensor cores (see
    /// `backend::gemv_mma`).
    mma_gemv_min_tokens: usize,
    /// 8, or in batch-invariant mode the most sequences a step has (in launches of 8 tokens).
    mma_gemv_max_tokens: usize,
    /// Batch-invariant mode (`CudaLimits::batch_invariant`).
    batch_invariant: bool,
    /// Sums of squares of the residual rows for the norms folded into the GEMVs, and which
    /// of its slots this step has used (see `backend::norm_fold`).
    norm_sums: DeviceBuffer,
    norm_slots: Cell<norm_fold::NormSlots>,
    /// `KR_CUDA_FOLD_NORMS` (default on).
    fold_norms: bool,
    /// Where quantised weights are decoded for a GEMM of more tokens than the GEMV takes (see
    /// `backend::quant`); sized while loading.
    dequant_scratch: RefCell<Option<DeviceBuffer>>,
    error: RefCell<Option<CudaError>>,
}

/// Launches kernel `$name` for the backend's dtype; arguments must be local variables.
macro_rules! launch {
    ($self:expr, $name:expr, $cfg:expr, $($arg:ident),* $(,)?) => {{
        if $self.error.borrow().is_none() && !$self.skipped($name) {
            let f = $self.gpu.function($name, $self.dtype.suffix());
            let mut params: Vec<*mut std::ffi::c_void> =
                vec![$( (&$arg) as *const _ as *mut std::ffi::c_void ),*];
            let timing = $self.profile_begin();
            // SAFETY: the parameters point at locals that outlive the call, one per kernel
            // parameter in order; every pointer argument covers the shape the kernel reads or
            // writes.
            let r = unsafe { $self.launch_raw(f, $cfg, &mut params) };
            $self.profile_end($name, timing);
            $self.record(r.map_err(driver($name)));
        }
    }};
}

pub(crate) mod attention;
mod fused;
pub(crate) mod gemv_mma;
mod kv8;
mod launch;
mod moe;
mod norm_fold;
mod profile;
mod project;
mod quant;
mod rows;
mod sample;
mod step_slots;
mod weights;
pub use attention::{DecodeKernels, DECODE_TILES_KERNELS, MMA_KERNEL_NAMES};
pub use fused::{GEMV_GATE_UP_KERNELS, GEMV_QKV_KERNELS};
pub use gemv_mma::GEMV_MMA_KERNEL_NAMES;
pub use kv8::KV8_KERNELS;
pub use moe::{CudaExperts, MOE_KERNELS};
pub use quant::{QGEMV_I8_KERNELS, QUANT_KERNELS};
pub use sample::RowSampling;
pub use step_slots::SampledTokens;
use weights::WeightArena;
pub use weights::{arena_size, device_bytes, CudaWeight};

fn grid1(blocks: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks.max(1) as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block per row for the row kernels (norms, embedding, RoPE, gathers). Few rows (decode)
/// get 1024 threads, so each thread walks a row in a few strides instead of a long chain of
/// dependent memory round trips; many rows (prefill) fill the GPU with 256-thread blocks.
fn per_row(rows: usize) -> LaunchConfig {
    grid1(rows, if rows <= 64 { 1024 } else { 256 })
}

/// 16-byte vectors per thread of `rms_norm_vec` (NORM_VREGS in kernels.cu; 256 threads).
const NORM_VREGS: usize = 4;

/// The kernels' `interleaved` argument: 1 for interleaved RoPE pairs, 0 for half-split.
fn interleaved_flag(rope: &Rope) -> i32 {
    i32::from(rope.style == RopeStyle::Interleaved)
}

/// Enough blocks of 256 threads for `n` elements in a grid-stride loop.
fn elementwise(n: usize) -> LaunchConfig {
    grid1(n.div_ceil(256).min(65_535), 256)
}

/// Lets each kernel that takes more than 48 KiB of dynamic shared memory have what its
/// launches ask for, up to the device's limit (`DeviceInfo::max_dynamic_smem`): a kernel that
/// would need more there fails at launch with a driver error, rather than every model failing
/// to load. (CUDA-core attention is sized for head_dim 128, the most `CudaModel::load` takes.)
fn allow_dynamic_smem(gpu: &Gpu) -> Result<()> {
    let most = gpu.info.max_dynamic_smem;
    let allow = |name: &str, suffix: &str, bytes: usize| {
        gpu.function(name, suffix)
            .set_attribute(
                cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes.min(most) as i32,
            )
            .map_err(driver("allowing a kernel's shared memory"))
    };
    for (suffix, size) in [("f32", 4), ("bf16", 2)] {
        allow("attention", suffix, attention::attention_smem(128))?;
        for (names, hd) in attention::DECODE_TILES_KERNELS.iter().zip([64, 128]) {
            for name in names {
                allow(name, suffix, attention::decode_tiles_smem(hd, size))?;
            }
        }
        for name in QGEMV_I8_KERNELS {
            allow(name, suffix, quant::QGEMV_I8_MAX_SMEM)?;
        }
    }
    let mma = MMA_KERNEL_NAMES.iter().chain(&kv8::KV8_KERNELS[2..]);
    for (name, hd) in mma.zip([64, 128, 64, 128]) {
        allow(name, "bf16", attention::mma_smem(hd))?;
    }
    for (name, hd) in kv8::KV8_KERNELS[..2].iter().zip([64, 128]) {
        allow(name, "bf16", kv8::decode_smem(hd))?;
    }
    Ok(())
}

impl CudaBackend {
    /// Whether KV caches hold fp8 codes with scales (`backend::kv8`).
    pub fn kv_fp8(&self) -> bool {
        self.kv_fp8
    }

    /// Bytes one token takes in one layer's key (or value) cache for one kv head: fp8 codes
    /// and their f32 scale, or `head_dim` elements of the compute type.
    pub fn kv_row_bytes(&self, head_dim: usize) -> usize {
        match self.kv_fp8 {
            true => head_dim + 4,
            false => head_dim * self.dtype.size(),
        }
    }

    pub fn new(gpu: Arc<Gpu>, dtype: DType, limits: CudaLimits) -> Result<Self> {
        let lt = Lt::new(&gpu)?;
        let pdl = launch::pdl_wanted(&gpu);
        let decode_kernels = attention::DecodeKernels::from_env(gpu.info.compute_capability);
        let split_counters = gpu.upload(&[0u32; attention::SPLIT_COUNTERS])?;
        let workspace = gpu.alloc(limits.workspace_bytes)?;
        let norm_sums = gpu.alloc(norm_fold::NORM_SUMS_BYTES)?;
        let meta_layout = MetaLayout::new(
            limits.max_tokens,
            limits.max_seqs,
            limits.max_blocks_per_seq,
        );
        let words = meta_layout.offsets().total;
        let meta_dev = gpu.alloc(words * 4)?;
        let step_slots = step_slots::StepSlots::new(
            &gpu,
            step_slots::SlotSizes {
                meta_words: words,
                max_rows: limits.max_tokens.max(limits.max_seqs),
                max_masked: limits.max_seqs,
                vocab: limits.vocab_size,
            },
        )?;
        allow_dynamic_smem(&gpu)?;
        Ok(Self {
            pool: Arc::new(Mutex::new(FirstFit::new(workspace.bytes))),
            gpu,
            lt,
            dtype,
            workspace,
            meta_layout,
            meta_dev,
            step_slots: RefCell::new(step_slots),
            feed: Cell::new(None),
            heads_per_kv: limits.heads_per_kv.max(1),
            step: Cell::new(StepCounts::default()),
            step_rows: RefCell::new(Vec::new()),
            inv_freq: RefCell::new(Vec::new()),
            weights: RefCell::new(None),
            profile: RefCell::new(None),
            pdl,
            split_counters,
            max_decode_splits: attention::max_decode_splits(),
            long_decode_splits: Cell::new(attention::LongDecodeSplits::from_env()),
            decode_kernels: Cell::new(decode_kernels),
            kv_fp8: limits.kv_fp8,
            skip_kernels: launch::skipped_kernels(),
            mma_gemv_min_tokens: match limits.batch_invariant_tokens {
                0 => gemv_mma::mma_gemv_min_tokens(),
                _ => 1,
            },
            mma_gemv_max_tokens: limits.batch_invariant_tokens.max(GEMV_MAX_ROWS),
            batch_invariant: limits.batch_invariant_tokens > 0,
            norm_sums,
            norm_slots: Cell::new(norm_fold::NormSlots::default()),
            fold_norms: norm_fold::fold_norms_wanted(),
            dequant_scratch: RefCell::new(None),
            error: RefCell::new(None),
        })
    }

    /// The first error since the last call, if any (clears it).
    pub fn take_error(&self) -> Option<CudaError> {
        self.error.borrow_mut().take()
    }

    fn record(&self, r: Result<()>) {
        if let Err(e) = r {
            let mut slot = self.error.borrow_mut();
            if slot.is_none() {
                *slot = Some(e);
            }
        }
    }

    /// Peak bytes of the step workspace used so far.
    pub fn workspace_peak(&self) -> usize {
        self.pool.lock().map_or(0, |p| p.peak())
    }

    /// A `rows × cols` tensor of `elem`-byte values from the workspace.
    fn alloc_elems(&self, rows: usize, cols: usize, elem: usize) -> CudaTensor {
        let bytes = rows * cols * elem;
        let offset = self.pool.lock().ok().and_then(|mut p| p.alloc(bytes));
        match offset {
            Some(offset) => CudaTensor {
                ptr: self.workspace.ptr + offset as u64,
                rows,
                cols,
                offset,
                bytes,
                pool: Some(self.pool.clone()),
                norm_sums: 0,
                norm_epoch: 0,
            },
            None => {
                self.record(Err(CudaError::OutOfMemory(format!(
                    "the step workspace ({} MiB) cannot hold a {rows}x{cols} tensor; \
                     lower max_num_batched_tokens",
                    self.workspace.bytes >> 20
                ))));
                CudaTensor {
                    ptr: 0,
                    rows,
                    cols,
                    offset: 0,
                    bytes: 0,
                    pool: None,
                    norm_sums: 0,
                    norm_epoch: 0,
                }
            }
        }
    }

    fn alloc(&self, rows: usize, cols: usize) -> CudaTensor {
        self.alloc_elems(rows, cols, self.dtype.size())
    }

    fn meta_ptr(&self, word: usize) -> u64 {
        self.meta_dev.ptr + 4 * word as u64
    }

    /// A tensor holding `data` (`rows × cols`, f32 on the host), converted to the dtype.
    pub fn upload_tensor(&self, rows: usize, cols: usize, data: &[f32]) -> CudaTensor {
        let t = self.alloc(rows, cols);
        if self.error.borrow().is_some() {
            return t;
        }
        let r = match self.dtype {
            DType::F32 => self.gpu.copy_to_device(t.ptr, data),
            DType::Bf16 => {
                let h: Vec<half::bf16> = data.iter().map(|&v| half::bf16::from_f32(v)).collect();
                self.gpu.copy_to_device(t.ptr, &h)
            }
        };
        self.record(r.and_then(|_| self.gpu.synchronize()));
        t
    }
}

impl Backend for CudaBackend {
    type Tensor = CudaTensor;
    type Weight = CudaWeight;
    type Vector = CudaVector;
    type KvCache = CudaKvCache;
    type Experts = CudaExperts;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn folds_norm_gains(&self, ty: GgmlType) -> bool {
        !quant::keeps_encoded(ty)
    }

    fn load_weight(&self, t: &RawTensor) -> CudaWeight {
        self.new_weight(t)
    }

    fn load_vector(&self, v: &[f32]) -> CudaVector {
        let buf = self.gpu.upload(v).unwrap_or_else(|e| {
            self.record(Err(e));
            DeviceBuffer { ptr: 0, bytes: 0 }
        });
        CudaVector {
            buf,
            unit: v.iter().all(|&g| g == 1.0),
        }
    }

    fn new_kv_cache(&self, layout: KvLayout) -> CudaKvCache {
        let slots = layout.num_blocks * layout.block_size;
        let elem = if self.kv_fp8 { 1 } else { self.dtype.size() };
        let half_layer_bytes = slots * layout.num_kv_heads * layout.head_dim * elem;
        let scale_bytes = if self.kv_fp8 {
            slots * layout.num_kv_heads * 4
        } else {
            0
        };
        let total = 2 * layout.num_layers * (half_layer_bytes + scale_bytes);
        let buf = match self.gpu.alloc(total) {
            Ok(b) => {
                // Zeroed so that nothing read before it is written can be NaN.
                // SAFETY: the buffer holds `total` bytes.
                let r = unsafe { cudarc::driver::result::memset_d8_sync(b.ptr, 0, total) };
                self.record(r.map_err(driver("clearing the KV cache")));
                b
            }
            Err(e) => {
                self.record(Err(e));
                DeviceBuffer { ptr: 0, bytes: 0 }
            }
        };
        CudaKvCache {
            buf,
            layout,
            half_layer_bytes,
            scale_bytes,
        }
    }

    fn begin_step(&self, ids: &[u32], meta: &AttnMeta) {
        self.record(self.gpu.bind());
        self.disarm_norm_slots();
        let feed = self.feed.take();
        let group = self.heads_per_kv;
        let mut slots = self.step_slots.borrow_mut();
        let words = match slots.next_staging() {
            Ok(w) => w,
            Err(e) => return self.record(Err(e)),
        };
        let counts = match pack(words, &self.meta_layout, ids, meta, tile_q(group)) {
            Ok(c) => c,
            Err(e) => return self.record(Err(e)),
        };
        for (off, len) in used_ranges(&self.meta_layout, &counts) {
            if len > 0 {
                self.record(
                    self.gpu
                        .copy_to_device(self.meta_ptr(off), &words[off..off + len]),
                );
            }
        }
        self.record(slots.fence_current(&self.gpu));
        if let Some((src, n)) = feed {
            let ids_ptr = self.meta_ptr(self.meta_layout.offsets().ids);
            self.record(self.gpu.copy_on_device(ids_ptr, src, 4 * n.min(ids.len())));
        }
        self.step.set(counts);
        *self.step_rows.borrow_mut() = meta.logit_rows.clone();
    }

    fn embed(&self, table: &CudaWeight, ids: &[u32]) -> CudaTensor {
        self.embed_rows(table, ids)
    }

    fn rms_norm(&self, x: &CudaTensor, w: &CudaVector, eps: f32) -> CudaTensor {
        let out = self.alloc(x.rows, x.cols);
        let (o, xp, wp, cols) = (out.ptr, x.ptr, w.buf.ptr, x.cols as i32);
        let vec = 16 / self.dtype.size();
        // `%` rather than `is_multiple_of`: the crate's rust-version is 1.85.
        if x.cols % vec == 0 && x.cols / vec <= NORM_VREGS * 256 {
            launch!(
                self,
                "rms_norm_vec",
                grid1(x.rows, 256),
                o,
                xp,
                wp,
                cols,
                eps
            );
        } else {
            launch!(self, "rms_norm", per_row(x.rows), o, xp, wp, cols, eps);
        }
        out
    }

    fn add_inplace(&self, x: &mut CudaTensor, delta: &CudaTensor) {
        x.norm_sums = 0;
        let n = (x.rows * x.cols) as u64;
        let (xp, dp) = (x.ptr, delta.ptr);
        launch!(self, "add_inplace", elementwise(n as usize), xp, dp, n);
    }

    fn linear(&self, x: &CudaTensor, w: &CudaWeight, bias: Option<&CudaVector>) -> CudaTensor {
        let y = self.alloc(x.rows, w.rows);
        self.project_into(y.ptr, x, w, bias, false);
        y
    }

    fn linear_add(&self, x: &mut CudaTensor, a: &CudaTensor, w: &CudaWeight) {
        if !self.linear_add_summing(x, a, w) {
            x.norm_sums = 0;
            self.project_into(x.ptr, a, w, None, true);
        }
    }

    fn rms_norm_qkv(
        &self,
        x: &CudaTensor,
        gain: &CudaVector,
        eps: f32,
        w: [&CudaWeight; 3],
        bias: [Option<&CudaVector>; 3],
    ) -> [CudaTensor; 3] {
        if quant::any_encoded(&w) {
            return self.linear_qkv(&self.rms_norm(x, gain, eps), w, bias);
        }
        let norm = self.folded_norm(x, gain, eps);
        norm.and_then(|n| self.fused_qkv(x, w, bias, Some(n)))
            .unwrap_or_else(|| self.linear_qkv(&self.rms_norm(x, gain, eps), w, bias))
    }

    fn rms_norm_gate_up(
        &self,
        x: &CudaTensor,
        gain: &CudaVector,
        eps: f32,
        w_gate: &CudaWeight,
        w_up: &CudaWeight,
    ) -> CudaTensor {
        if quant::any_encoded(&[w_gate, w_up]) {
            return self.linear_gate_up(&self.rms_norm(x, gain, eps), w_gate, w_up);
        }
        let norm = self.folded_norm(x, gain, eps);
        norm.and_then(|n| self.fused_gate_up(x, w_gate, w_up, Some(n)))
            .unwrap_or_else(|| self.linear_gate_up(&self.rms_norm(x, gain, eps), w_gate, w_up))
    }

    fn linear_qkv(
        &self,
        x: &CudaTensor,
        w: [&CudaWeight; 3],
        bias: [Option<&CudaVector>; 3],
    ) -> [CudaTensor; 3] {
        if quant::any_encoded(&w) {
            return [0, 1, 2].map(|i| self.linear(x, w[i], bias[i]));
        }
        self.mma_qkv(x, w, bias)
            .or_else(|| self.fused_qkv(x, w, bias, None))
            .or_else(|| self.packed_qkv(x, w, bias))
            .unwrap_or_else(|| [0, 1, 2].map(|i| self.linear(x, w[i], bias[i])))
    }

    fn linear_gate_up(&self, x: &CudaTensor, w_gate: &CudaWeight, w_up: &CudaWeight) -> CudaTensor {
        if quant::any_encoded(&[w_gate, w_up]) {
            return self.silu_mul(&self.linear(x, w_gate, None), &self.linear(x, w_up, None));
        }
        let fused = self.mma_gate_up(x, w_gate, w_up);
        fused
            .or_else(|| self.fused_gate_up(x, w_gate, w_up, None))
            .or_else(|| self.packed_gate_up(x, w_gate, w_up))
            .unwrap_or_else(|| {
                self.silu_mul(&self.linear(x, w_gate, None), &self.linear(x, w_up, None))
            })
    }

    fn head_rms_norm(&self, x: &mut CudaTensor, w: &CudaVector, head_dim: usize, eps: f32) {
        x.norm_sums = 0;
        let heads = x.rows * x.cols / head_dim;
        let (xp, wp, h, hd) = (x.ptr, w.buf.ptr, heads as i32, head_dim as i32);
        launch!(
            self,
            "head_rms_norm",
            grid1(heads.div_ceil(8), 256),
            xp,
            wp,
            h,
            hd,
            eps
        );
    }

    fn rope_and_write_kv(
        &self,
        q: &mut CudaTensor,
        k: &mut CudaTensor,
        v: &CudaTensor,
        rope: &Rope,
        _meta: &AttnMeta,
        layer: usize,
        cache: &mut CudaKvCache,
    ) {
        self.rope_write_kv(q, k, v, rope, layer, cache);
    }

    fn rope_attention(
        &self,
        q: &mut CudaTensor,
        k: &mut CudaTensor,
        v: &CudaTensor,
        rope: &Rope,
        _meta: &AttnMeta,
        layer: usize,
        cache: &mut CudaKvCache,
        num_heads: usize,
    ) -> CudaTensor {
        (q.norm_sums, k.norm_sums) = (0, 0);
        let out = self.alloc(q.rows, q.cols);
        self.rope_attention_into(&out, q, k, v, rope, layer, cache, num_heads);
        out
    }

    fn paged_attention(
        &self,
        q: &CudaTensor,
        _meta: &AttnMeta,
        layer: usize,
        cache: &CudaKvCache,
        num_heads: usize,
    ) -> CudaTensor {
        let out = self.alloc(q.rows, q.cols);
        self.attention_into(&out, q, layer, cache, num_heads);
        out
    }

    fn silu_mul(&self, gate: &CudaTensor, up: &CudaTensor) -> CudaTensor {
        self.gated("silu_mul", gate, up)
    }

    fn gather_rows(&self, x: &CudaTensor, rows: &[usize]) -> CudaTensor {
        self.gather(x, rows)
    }

    fn gelu_mul(&self, gate: &CudaTensor, up: &CudaTensor) -> CudaTensor {
        self.gated("gelu_mul", gate, up)
    }

    fn scale_inplace(&self, x: &mut CudaTensor, s: f32) {
        self.scale_or_cap(x, s, 0.0);
    }

    fn softcap_inplace(&self, x: &mut CudaTensor, cap: f32) {
        self.scale_or_cap(x, 1.0, cap);
    }

    fn scatter_add_scaled(
        &self,
        x: &mut CudaTensor,
        rows: &[usize],
        src: &CudaTensor,
        scales: &[f32],
    ) {
        self.scatter_add(x, rows, src, scales);
    }

    fn prepare_experts(&self, experts: &[[CudaWeight; 3]], top_k: usize) -> Option<CudaExperts> {
        self.experts_table(experts, top_k)
    }

    fn experts_add(
        &self,
        x: &mut CudaTensor,
        h: &CudaTensor,
        router_logits: &CudaTensor,
        experts: &CudaExperts,
        routing: (usize, bool),
    ) {
        self.experts_add_routed(x, h, router_logits, experts, routing);
    }

    fn to_host(&self, x: &CudaTensor) -> Vec<f32> {
        let n = x.rows * x.cols;
        let mut host = vec![0f32; n];
        if self.error.borrow().is_some() {
            return host;
        }
        match self.dtype {
            DType::F32 => self.record(self.gpu.copy_to_host(&mut host, x.ptr)),
            DType::Bf16 => {
                let f = self.alloc_elems(x.rows, x.cols, 4);
                let (o, xp, nn) = (f.ptr, x.ptr, n as u64);
                launch!(self, "to_f32", elementwise(n), o, xp, nn);
                if self.error.borrow().is_none() {
                    self.record(self.gpu.copy_to_host(&mut host, f.ptr));
                }
            }
        }
        host
    }
}
