//! Quantised weights on the GPU (`kernels/quant.cu`): matrices in GGUF block types stay in
//! GPU memory as the file stores them (a Q4_K_M 8B model takes ~5 GB, not 15).
//!
//! - up to 8 tokens: `qgemv_*` decodes each weight once, in registers, for all tokens; for
//!   Q4_K and Q6_K in bf16 models, `qgemv_i8_*` instead quantises the activations to int8 per
//!   32 in shared memory and multiplies with integer dot products (llama.cpp's approach), for
//!   steps of up to `KR_CUDA_QGEMV_INT8` tokens (0 turns it off);
//! - more tokens (prefill, large decode batches): `qdequant_*` decodes a chunk of rows into a
//!   scratch buffer small enough to stay in L2 (`KR_CUDA_DEQUANT_CHUNK_MIB`, default 16), and
//!   cuBLASLt multiplies it into the matching slice of the output's columns;
//! - embedding rows: `qembed_*` decodes the rows of the step's ids.
//!
//! Invariants: a quantised [`CudaWeight`] holds the encoded rows back to back (`quant` names
//! the type) and is never passed to the dense kernels: the fused and tensor-core paths are
//! skipped for it, and the norm before it is not folded into it (`keeps_encoded`). The scratch
//! buffer is sized while loading, so steps allocate nothing.

use super::{elementwise, grid1, CudaBackend, CudaTensor, CudaVector, CudaWeight};
use crate::error::{driver, Result};
use kr_model::quant::{GgmlType, ScaleType};

/// Kernels per encoding (GGUF types by name, MLX by bits and scale type): GEMV,
/// dequantise-rows and embed, each compiled for f32 and bf16.
pub const QUANT_KERNELS: [[&str; 3]; 18] = [
    ["qgemv_q4_0", "qdequant_q4_0", "qembed_q4_0"],
    ["qgemv_q4_1", "qdequant_q4_1", "qembed_q4_1"],
    ["qgemv_q5_0", "qdequant_q5_0", "qembed_q5_0"],
    ["qgemv_q5_1", "qdequant_q5_1", "qembed_q5_1"],
    ["qgemv_q8_0", "qdequant_q8_0", "qembed_q8_0"],
    ["qgemv_q2_k", "qdequant_q2_k", "qembed_q2_k"],
    ["qgemv_q3_k", "qdequant_q3_k", "qembed_q3_k"],
    ["qgemv_q4_k", "qdequant_q4_k", "qembed_q4_k"],
    ["qgemv_q5_k", "qdequant_q5_k", "qembed_q5_k"],
    ["qgemv_q6_k", "qdequant_q6_k", "qembed_q6_k"],
    ["qgemv_iq4_nl", "qdequant_iq4_nl", "qembed_iq4_nl"],
    ["qgemv_iq4_xs", "qdequant_iq4_xs", "qembed_iq4_xs"],
    ["qgemv_mlx4_f16", "qdequant_mlx4_f16", "qembed_mlx4_f16"],
    ["qgemv_mlx4_bf16", "qdequant_mlx4_bf16", "qembed_mlx4_bf16"],
    ["qgemv_mlx4_f32", "qdequant_mlx4_f32", "qembed_mlx4_f32"],
    ["qgemv_mlx8_f16", "qdequant_mlx8_f16", "qembed_mlx8_f16"],
    ["qgemv_mlx8_bf16", "qdequant_mlx8_bf16", "qembed_mlx8_bf16"],
    ["qgemv_mlx8_f32", "qdequant_mlx8_f32", "qembed_mlx8_f32"],
];

/// Tokens the quantised GEMV takes (its accumulators per lane).
const QGEMV_MAX_TOKENS: usize = 8;

/// The int8-activation GEMVs (Q4_K, Q6_K), compiled for f32 and bf16.
pub const QGEMV_I8_KERNELS: [&str; 2] = ["qgemv_i8_q4_k", "qgemv_i8_q6_k"];

/// Most shared memory the int8 GEMV's quantised activations take (`tokens × cols × 5/4`
/// bytes); larger steps use the float GEMV.
pub(super) const QGEMV_I8_MAX_SMEM: usize = 96 << 10;

/// Most tokens a step has for the int8 GEMV by default (`KR_CUDA_QGEMV_INT8` sets it): from
/// two tokens on, each block's quantisation of every token's activations costs more than the
/// float GEMV's decoding (docs/benchmarks.md).
const QGEMV_I8_TOKENS: usize = 1;

/// Rows (one warp each) per block of the int8 GEMV (QI8_ROWS).
const QGEMV_I8_ROWS: usize = 8;

/// The three kernels of `ty` and the group size they take (MLX; 0 for GGUF types), `None` for
/// the float types.
fn kernels(ty: GgmlType) -> Option<([&'static str; 3], i32)> {
    let gguf = |i: usize| Some((QUANT_KERNELS[i], 0));
    match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => None,
        GgmlType::Q4_0 => gguf(0),
        GgmlType::Q4_1 => gguf(1),
        GgmlType::Q5_0 => gguf(2),
        GgmlType::Q5_1 => gguf(3),
        GgmlType::Q8_0 => gguf(4),
        GgmlType::Q2K => gguf(5),
        GgmlType::Q3K => gguf(6),
        GgmlType::Q4K => gguf(7),
        GgmlType::Q5K => gguf(8),
        GgmlType::Q6K => gguf(9),
        GgmlType::IQ4NL => gguf(10),
        GgmlType::IQ4XS => gguf(11),
        GgmlType::Mlx(m) => {
            let scale = match m.scale {
                ScaleType::F16 => 0,
                ScaleType::BF16 => 1,
                ScaleType::F32 => 2,
            };
            let bits = if m.bits == 4 { 0 } else { 3 };
            Some((QUANT_KERNELS[12 + bits + scale], i32::from(m.group)))
        }
    }
}

/// Whether weights of `ty` stay encoded on the GPU (every quantised type; floats are converted
/// to the compute dtype).
pub fn keeps_encoded(ty: GgmlType) -> bool {
    kernels(ty).is_some()
}

/// Whether any of `w` is stored encoded (the fused dense paths then do not apply).
pub(super) fn any_encoded(w: &[&CudaWeight]) -> bool {
    w.iter().any(|w| w.quant.is_some())
}

/// Bytes of the dequantisation chunk: `KR_CUDA_DEQUANT_CHUNK_MIB` (1..=1024), default 16,
/// read once (the scratch buffer is sized with it at load).
fn chunk_bytes() -> usize {
    static BYTES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BYTES.get_or_init(|| {
        let mib = crate::tuning::value("KR_CUDA_DEQUANT_CHUNK_MIB")
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|m| (1..=1024).contains(m))
            .unwrap_or(16);
        mib << 20
    })
}

/// Output rows a chunk's GEMM writes must start 256-byte aligned (cuBLASLt's default
/// assumption for its pointers): a multiple of this many rows does for f32 and bf16.
const CHUNK_ROW_ALIGN: usize = 128;

/// Rows of a `rows × cols` matrix decoded per chunk with `elem`-byte elements: a multiple of
/// [`CHUNK_ROW_ALIGN`] (at least one such multiple), or all rows.
fn chunk_rows(rows: usize, cols: usize, elem: usize) -> usize {
    let fit = chunk_bytes() / (cols * elem).max(1) / CHUNK_ROW_ALIGN * CHUNK_ROW_ALIGN;
    fit.max(CHUNK_ROW_ALIGN).min(rows.max(1))
}

impl CudaBackend {
    /// Grows the dequantisation scratch buffer to hold a chunk of `t` (at load time).
    pub(super) fn size_dequant_scratch(&self, rows: usize, cols: usize) -> Result<()> {
        let elem = self.dtype.size();
        let need = chunk_rows(rows, cols, elem) * cols * elem;
        let mut scratch = self.dequant_scratch.borrow_mut();
        if scratch.as_ref().is_none_or(|b| b.bytes < need) {
            *scratch = None;
            *scratch = Some(self.gpu.alloc(need)?);
        }
        Ok(())
    }

    /// `y = x · wᵀ (+ bias)` (`y +=` where `accumulate`) for an encoded `w`.
    pub(super) fn quant_project_into(
        &self,
        y: u64,
        x: &CudaTensor,
        w: &CudaWeight,
        bias: Option<&CudaVector>,
        accumulate: bool,
    ) {
        let Some(([gemv, dequant, _], group)) = w.quant.and_then(kernels) else {
            return;
        };
        if let Some((name, smem)) = self.int8_gemv(x, w) {
            let (xp, wp, bp) = (x.ptr, w.ptr, bias.map_or(0u64, |b| b.buf.ptr));
            let (rows, cols, nt) = (w.rows as i32, w.cols as i32, x.rows as i32);
            let acc = i32::from(accumulate);
            let cfg = cudarc::driver::LaunchConfig {
                grid_dim: (w.rows.div_ceil(QGEMV_I8_ROWS) as u32, 1, 1),
                block_dim: (32 * QGEMV_I8_ROWS as u32, 1, 1),
                shared_mem_bytes: smem as u32,
            };
            launch!(self, name, cfg, y, xp, wp, bp, rows, cols, nt, acc);
            return;
        }
        if x.rows <= QGEMV_MAX_TOKENS {
            let (xp, wp, bp) = (x.ptr, w.ptr, bias.map_or(0u64, |b| b.buf.ptr));
            let (rows, cols, nt) = (w.rows as i32, w.cols as i32, x.rows as i32);
            let acc = i32::from(accumulate);
            let cfg = grid1(w.rows.div_ceil(8), 256);
            launch!(self, gemv, cfg, y, xp, wp, bp, rows, cols, nt, acc, group);
            return;
        }
        self.dequant_gemm(y, x, w, (dequant, group), accumulate);
        self.add_bias(y, bias, x.rows, w.rows);
    }

    /// The int8-activation GEMV for `x · wᵀ` and its shared memory, where it applies: a bf16
    /// model, a Q4_K or Q6_K `w`, at most `KR_CUDA_QGEMV_INT8` tokens (default
    /// [`QGEMV_I8_TOKENS`]) whose int8 copy fits [`QGEMV_I8_MAX_SMEM`]. (In f32 models the float
    /// GEMV keeps their results within 1e-4 of the CPU's.)
    fn int8_gemv(&self, x: &CudaTensor, w: &CudaWeight) -> Option<(&'static str, usize)> {
        static MOST: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        let most = *MOST.get_or_init(|| {
            crate::tuning::value("KR_CUDA_QGEMV_INT8")
                .and_then(|v| v.trim().parse::<usize>().ok())
                .map_or(QGEMV_I8_TOKENS, |n| n.min(QGEMV_MAX_TOKENS))
        });
        let name = match w.quant? {
            GgmlType::Q4K => QGEMV_I8_KERNELS[0],
            GgmlType::Q6K => QGEMV_I8_KERNELS[1],
            _ => return None,
        };
        let smem = x.rows * w.cols * 5 / 4;
        let room = QGEMV_I8_MAX_SMEM.min(self.gpu.info.max_dynamic_smem);
        let fits = x.rows <= most && smem <= room && w.cols % 256 == 0;
        (fits && self.dtype == super::DType::Bf16).then_some((name, smem))
    }

    /// `y = x · wᵀ` chunk by chunk of `w`'s rows: decode the chunk into the scratch buffer, then
    /// one GEMM into the chunk's columns of `y`.
    fn dequant_gemm(
        &self,
        y: u64,
        x: &CudaTensor,
        w: &CudaWeight,
        (dequant, group): (&'static str, i32),
        acc: bool,
    ) {
        let Some(scratch) = self.dequant_scratch.borrow().as_ref().map(|b| b.ptr) else {
            self.record(Err(crate::CudaError::Unsupported(
                "a quantised weight was loaded without a dequantisation buffer".into(),
            )));
            return;
        };
        let elem = self.dtype.size();
        let (rows, cols) = (w.rows, w.cols);
        let step = chunk_rows(rows, cols, elem);
        let row_bytes = w.bytes / rows;
        let mut r0 = 0;
        while r0 < rows {
            let n = step.min(rows - r0);
            let (out, src, c) = (scratch, w.ptr + (r0 * row_bytes) as u64, cols as i32);
            let units = (n * cols / 32) as u64;
            launch!(
                self,
                dequant,
                elementwise(units as usize),
                out,
                src,
                c,
                units,
                group
            );
            let y0 = y + (r0 * elem) as u64;
            self.gemm_strided(y0, x.ptr, scratch, (x.rows, n, cols), rows, acc);
            r0 += n;
        }
    }

    /// The rows of an encoded `table` for the step's ids, decoded.
    pub(super) fn quant_embed(&self, table: &CudaWeight, ids: &[u32]) -> CudaTensor {
        let out = self.alloc(ids.len(), table.cols);
        let Some(([_, _, embed], group)) = table.quant.and_then(kernels) else {
            return out;
        };
        let (o, t, idp, cols) = (
            out.ptr,
            table.ptr,
            self.meta_ptr(self.meta_layout.offsets().ids),
            table.cols as i32,
        );
        launch!(self, embed, grid1(ids.len(), 256), o, t, idp, cols, group);
        out
    }
}
