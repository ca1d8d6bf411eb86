//! The GPU: driver context, one stream, the kernel module (NVRTC-compiled on first use and
//! cached on disk), and raw device / pinned host buffers.
//!
//! Invariants: all work goes to one stream in order; the context's event tracking is off (we
//! synchronise explicitly, and graph capture must not see stray event records); every device
//! allocation after load is counted in `allocations`.

use crate::error::{driver, CudaError, Result};
use cudarc::driver::{result, sys, CudaContext, CudaFunction, CudaModule, CudaStream};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions, Ptx};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// The kernels as one NVRTC program: shared types and helpers first, then attention, the
/// tensor-core GEMV (which uses attention's mma helper), sampling, quantised weights.
const KERNEL_SOURCE: &str = concat!(
    include_str!("../kernels/kernels.cu"),
    include_str!("../kernels/attention.cu"),
    include_str!("../kernels/decode_attention.cu"),
    include_str!("../kernels/decode_tiles.cu"),
    include_str!("../kernels/gemv_mma.cu"),
    include_str!("../kernels/sample.cu"),
    include_str!("../kernels/quant.cu"),
    include_str!("../kernels/moe.cu")
);

/// Names of the kernels, each compiled for f32 and bf16 (`name_f32`, `name_bf16`); the fused
/// and tensor-core kernels are listed in `backend::fused`.
pub const KERNEL_NAMES: [&str; 32] = [
    "embed",
    "embed_norm_sums",
    "rms_norm",
    "rms_norm_vec",
    "add_inplace",
    "silu_mul",
    "add_bias",
    "head_rms_norm",
    "rope_write_kv",
    "gemv1",
    "gemv2",
    "gemv3",
    "gemv4",
    "gemv5",
    "gemv6",
    "gemv7",
    "gemv8",
    "gather_rows",
    "gelu_mul",
    "scale_or_cap",
    "scatter_add_scaled",
    "attention",
    "attention_decode",
    "attention_decode_split",
    "attention_decode_cluster",
    "split_qkv",
    "silu_mul_packed",
    "argmax",
    "spin_wait",
    "sample",
    "mask_logits",
    "to_f32",
];

/// What `--device` found: name, memory and compute capability.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub total_memory: usize,
    pub compute_capability: (i32, i32),
    /// Streaming multiprocessors (kernels with fewer blocks than this are latency-bound).
    pub multiprocessors: usize,
    /// Most dynamic shared memory a block of ours may ask for: the device's opt-in limit per
    /// block (227 KiB on sm_90, 163 KiB on sm_80, 99 KiB on sm_86/89, 64 KiB on sm_75) less
    /// 16 KiB for the kernels' static shared memory, and never below the 48 KiB every block
    /// may have without asking.
    pub max_dynamic_smem: usize,
}

/// One GPU with its stream and compiled kernels.
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    _module: Arc<CudaModule>,
    functions: HashMap<String, CudaFunction>,
    pub info: DeviceInfo,
    /// Device allocations made through [`Gpu::alloc`] (weights, cache, workspace, buffers).
    pub allocations: AtomicU64,
}

/// Opens GPU `ordinal`, or says why there is none (no driver library, no device).
pub fn probe(ordinal: usize) -> Result<DeviceInfo> {
    info_of(&open_context(ordinal)?)
}

/// The driver context of GPU `ordinal`, or why there is none.
fn open_context(ordinal: usize) -> Result<Arc<CudaContext>> {
    let count = quietly(CudaContext::device_count)
        .map_err(|_| {
            CudaError::Unavailable(
                "the NVIDIA driver library (libcuda.so) could not be loaded".into(),
            )
        })?
        .map_err(|e| CudaError::Unavailable(format!("the driver reports: {e}")))?;
    if ordinal as i32 >= count {
        return Err(CudaError::Unavailable(format!(
            "GPU {ordinal} requested but the driver sees {count} GPU(s)"
        )));
    }
    CudaContext::new(ordinal).map_err(driver("opening the GPU"))
}

/// Runs `f`, turning a panic (cudarc's answer to a missing library) into `Err` without
/// printing the panic message: on a machine without a GPU that is the expected case.
pub(crate) fn quietly<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(previous);
    r
}

fn info_of(ctx: &Arc<CudaContext>) -> Result<DeviceInfo> {
    Ok(DeviceInfo {
        ordinal: ctx.ordinal(),
        name: ctx.name().map_err(driver("reading the GPU name"))?,
        total_memory: ctx.total_mem().map_err(driver("reading GPU memory"))?,
        compute_capability: ctx
            .compute_capability()
            .map_err(driver("reading the compute capability"))?,
        multiprocessors: ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(driver("reading the multiprocessor count"))?
            .max(1) as usize,
        max_dynamic_smem: (ctx
            .attribute(
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )
            .map_err(driver("reading the shared memory per block"))?
            .max(0) as usize)
            .saturating_sub(16 << 10)
            .max(48 << 10),
    })
}

impl Gpu {
    /// Opens the GPU, makes its stream and loads the kernels.
    pub fn open(ordinal: usize) -> Result<Self> {
        let ctx = open_context(ordinal)?;
        // SAFETY: no other stream or slice of this context exists yet.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(driver("creating a stream"))?;
        let info = info_of(&ctx)?;
        let ptx = compiled_kernels(info.compute_capability)?;
        let module = ctx
            .load_module(ptx)
            .map_err(driver("loading the kernels"))?;
        let mut functions = HashMap::new();
        let both = KERNEL_NAMES
            .iter()
            .chain(&crate::backend::GEMV_QKV_KERNELS)
            .chain(&crate::backend::GEMV_GATE_UP_KERNELS)
            .chain(crate::backend::DECODE_TILES_KERNELS.as_flattened())
            .chain(crate::backend::QUANT_KERNELS.as_flattened())
            .chain(&crate::backend::QGEMV_I8_KERNELS)
            .chain(&crate::backend::MOE_KERNELS);
        let all = both
            .flat_map(|n| [(*n, "f32"), (*n, "bf16")])
            .chain(crate::backend::MMA_KERNEL_NAMES.map(|n| (n, "bf16")))
            .chain(crate::backend::KV8_KERNELS.map(|n| (n, "bf16")))
            .chain(crate::backend::GEMV_MMA_KERNEL_NAMES.map(|n| (n, "bf16")));
        for (name, suffix) in all {
            let full = format!("{name}_{suffix}");
            let f = module
                .load_function(&full)
                .map_err(driver("finding a kernel"))?;
            functions.insert(full, f);
        }
        Ok(Self {
            ctx,
            stream,
            _module: module,
            functions,
            info,
            allocations: AtomicU64::new(0),
        })
    }

    /// The kernel `name` for element type `suffix` ("f32" or "bf16").
    pub fn function(&self, name: &str, suffix: &str) -> &CudaFunction {
        &self.functions[&format!("{name}_{suffix}")]
    }

    pub fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(driver("binding the GPU"))
    }

    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(driver("synchronising"))
    }

    /// `bytes` of device memory, counted.
    pub fn alloc(&self, bytes: usize) -> Result<DeviceBuffer> {
        self.bind()?;
        self.allocations.fetch_add(1, Relaxed);
        // SAFETY: a plain allocation; freed once in DeviceBuffer::drop.
        let ptr = unsafe { result::malloc_sync(bytes.max(1)) }.map_err(|e| {
            CudaError::OutOfMemory(format!("allocating {} MiB failed: {e}", bytes >> 20))
        })?;
        Ok(DeviceBuffer { ptr, bytes })
    }

    /// Copies `data` to device memory at `ptr` (synchronous; load time only). The caller
    /// guarantees that `ptr` starts a range of at least `data`'s bytes.
    pub fn upload_to<T: Copy>(&self, ptr: sys::CUdeviceptr, data: &[T]) -> Result<()> {
        self.bind()?;
        // SAFETY: the range at `ptr` holds `data`'s bytes (caller's contract).
        unsafe { result::memcpy_htod_sync(ptr, data) }.map_err(driver("uploading"))
    }

    /// Copies `data` to a new device buffer (synchronous; load time only).
    pub fn upload<T: Copy>(&self, data: &[T]) -> Result<DeviceBuffer> {
        let buf = self.alloc(std::mem::size_of_val(data))?;
        // SAFETY: the buffer holds exactly `data`'s bytes.
        unsafe { result::memcpy_htod_sync(buf.ptr, data) }.map_err(driver("uploading"))?;
        Ok(buf)
    }

    /// Asynchronous host-to-device copy on the stream (the host memory must stay valid and
    /// unchanged until the stream reaches it: callers use pinned buffers they sync on).
    pub fn copy_to_device<T>(&self, dst: u64, src: &[T]) -> Result<()> {
        // SAFETY: the caller guarantees `dst` holds `src`'s bytes.
        unsafe { result::memcpy_htod_async(dst, src, self.stream.cu_stream()) }
            .map_err(driver("copying to the GPU"))
    }

    /// Device-to-device copy of `bytes`, in stream order.
    pub fn copy_on_device(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        // SAFETY: the caller guarantees both ranges hold `bytes`.
        unsafe { result::memcpy_dtod_async(dst, src, bytes, self.stream.cu_stream()) }
            .map_err(driver("copying on the GPU"))
    }

    /// Device-to-host copy queued on the stream; `dst` must be pinned memory that stays
    /// untouched until the stream reaches an event recorded after this call.
    pub fn copy_to_host_async<T>(&self, dst: &mut [T], src: u64) -> Result<()> {
        // SAFETY: `src` holds at least `dst`'s bytes; `dst` is pinned (caller's contract).
        unsafe { result::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }
            .map_err(driver("copying from the GPU"))
    }

    /// Synchronous device-to-host copy (waits for the stream first).
    pub fn copy_to_host<T>(&self, dst: &mut [T], src: u64) -> Result<()> {
        self.copy_to_host_async(dst, src)?;
        self.synchronize()
    }

    /// Free and total device memory in bytes.
    pub fn memory(&self) -> Result<(usize, usize)> {
        self.bind()?;
        result::mem_get_info().map_err(driver("reading free memory"))
    }
}

/// Owned device memory.
pub struct DeviceBuffer {
    pub ptr: sys::CUdeviceptr,
    pub bytes: usize,
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated by malloc_sync and freed only here.
        let _ = unsafe { result::free_sync(self.ptr) };
    }
}

/// Page-locked host memory of `len` u32 words, for asynchronous copies.
pub struct PinnedWords {
    ptr: *mut u32,
    len: usize,
}

// SAFETY: the buffer is plain memory owned by this value.
unsafe impl Send for PinnedWords {}

impl PinnedWords {
    pub fn new(gpu: &Gpu, len: usize) -> Result<Self> {
        gpu.bind()?;
        // SAFETY: freed once in drop.
        let ptr = unsafe { result::malloc_host(len.max(1) * 4, 0) }
            .map_err(driver("allocating pinned memory"))? as *mut u32;
        // SAFETY: fresh allocation of `len` words.
        unsafe { std::ptr::write_bytes(ptr, 0, len) };
        Ok(Self { ptr, len })
    }
    pub fn as_mut_slice(&mut self) -> &mut [u32] {
        // SAFETY: `ptr` holds `len` initialised words for the life of self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for PinnedWords {
    fn drop(&mut self) {
        // SAFETY: allocated by malloc_host and freed only here.
        let _ = unsafe { result::free_host(self.ptr as *mut _) };
    }
}

/// Kernel variants for comparison runs, chosen at compile time (kernels.cu): `KR_CUDA_PDL_EARLY=0`
/// leaves out the early programmatic-launch trigger, `KR_CUDA_GEMV_PRELOAD=0` the GEMVs' weight
/// loads before the launch wait (`KR_CUDA_GEMV_HEAD`: how many; see `gemv_head_define`); the
/// tensor-core GEMV's shape (see `backend::gemv_mma`); the tiled decode kernels' tile buffers
/// (see `backend::attention::decode_tile_stages`).
fn compile_switches() -> Vec<String> {
    [
        ("KR_CUDA_PDL_EARLY", "KR_PDL_EARLY"),
        ("KR_CUDA_GEMV_PRELOAD", "KR_GEMV_PRELOAD"),
    ]
    .iter()
    .map(|(var, define)| format!("-D{define}={}", u8::from(!crate::tuning::switched_off(var))))
    .chain(gemv_head_define())
    .chain(crate::backend::gemv_mma::compile_defines())
    .chain([crate::backend::attention::decode_stages_define()])
    .collect()
}

/// `KR_CUDA_GEMV_HEAD=4|8`: weight vectors per lane the GEMVs load before the launch wait
/// (kernels.cu's KR_GEMV_HEAD, default 8; for comparison runs).
fn gemv_head_define() -> Option<String> {
    let head = crate::tuning::value("KR_CUDA_GEMV_HEAD")?;
    matches!(head.trim(), "4" | "8").then(|| format!("-DKR_GEMV_HEAD={}", head.trim()))
}

/// The kernel module for compute capability `cc`: from the disk cache when this source was
/// compiled before for this GPU and NVRTC, else compiled now and stored.
fn compiled_kernels(cc: (i32, i32)) -> Result<Ptx> {
    let arch = format!("compute_{}{}", cc.0, cc.1);
    let nvrtc = nvrtc_version()?;
    let defines = compile_switches();
    let key = fnv1a(format!("{KERNEL_SOURCE}\0{arch}\0{nvrtc}\0{defines:?}").as_bytes());
    let path = cache_dir().map(|d| d.join(format!("kernels-{key:016x}.ptx")));
    if let Some(src) = path.as_ref().and_then(|p| std::fs::read_to_string(p).ok()) {
        tracing::debug!("kernels from the cache");
        return Ok(Ptx::from_src(src));
    }
    let t0 = std::time::Instant::now();
    let opts = CompileOptions {
        options: vec![format!("--gpu-architecture={arch}"), "-std=c++17".into()]
            .into_iter()
            .chain(defines)
            .collect(),
        ..Default::default()
    };
    let ptx = compile_ptx_with_opts(KERNEL_SOURCE, opts)
        .map_err(|e| CudaError::Compile(e.to_string()))?;
    tracing::info!(
        "compiled the CUDA kernels for {arch} in {:.2?}",
        t0.elapsed()
    );
    if let Some(p) = path {
        let stored = p
            .parent()
            .map(std::fs::create_dir_all)
            .transpose()
            .and_then(|_| std::fs::write(&p, ptx.to_src()));
        if let Err(e) = stored {
            tracing::warn!("cannot cache the kernels at {}: {e}", p.display());
        }
    }
    Ok(ptx)
}

fn nvrtc_version() -> Result<String> {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two out-parameters; the library is loaded on first use (a panic if it is missing).
    let status = quietly(|| unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) })
        .map_err(|_| {
            CudaError::Unavailable(
                "the NVRTC library (libnvrtc.so) could not be loaded; add the CUDA lib64 \
             directory to LD_LIBRARY_PATH"
                    .into(),
            )
        })?;
    if status != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(CudaError::Compile(format!("nvrtcVersion: {status:?}")));
    }
    Ok(format!("{major}.{minor}"))
}

/// `$KR_CUDA_CACHE`, else `$XDG_CACHE_HOME/kr-serve/cuda`, else `~/.cache/kr-serve/cuda`.
fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = crate::tuning::value("KR_CUDA_CACHE") {
        return Some(PathBuf::from(d));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("kr-serve").join("cuda"))
}

/// FNV-1a, 64-bit: a stable hash for the cache key (std's hasher may change between builds).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}
