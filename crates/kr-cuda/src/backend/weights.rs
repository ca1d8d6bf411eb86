//! Weights on the device: each float matrix converted to the compute dtype, each quantised one
//! kept as the file encodes it (`backend::quant`), placed in one arena back to back in load
//! order, so that matrices loaded one after another (wq|wk|wv, w_gate|w_up) can run as one
//! GEMM.
//!
//! Invariant: every weight starts at a multiple of WEIGHT_ALIGN bytes, so two weights are
//! adjacent exactly when the second starts at the first's end rounded up to it.

use super::quant::keeps_encoded;
use super::{CudaBackend, DType};
use crate::device::DeviceBuffer;
use crate::error::Result;
use kr_model::quant::GgmlType;
use kr_model::RawTensor;
use std::sync::Arc;

/// A weight matrix: a range of the weight arena (or its own buffer when the arena is full).
/// Weights loaded one after another are adjacent in the arena, which lets prefill run q|k|v
/// and gate|up as one GEMM each.
pub struct CudaWeight {
    pub(super) ptr: u64,
    pub(super) bytes: usize,
    _mem: Arc<DeviceBuffer>,
    pub rows: usize,
    pub cols: usize,
    /// The GGUF block type of an encoded weight; `None`: the compute dtype.
    pub quant: Option<GgmlType>,
}

/// Bytes `t` takes on the device in `dtype`: its encoded bytes for a type kept encoded, else
/// one element of the dtype per value.
pub fn device_bytes(t: &RawTensor, dtype: DType) -> usize {
    if keeps_encoded(t.ty) {
        t.bytes.as_slice().len()
    } else {
        t.rows * t.cols * dtype.size()
    }
}

/// One allocation that the weights are placed in back to back, in load order.
pub(super) struct WeightArena {
    mem: Arc<DeviceBuffer>,
    used: usize,
}

/// Alignment of each weight in the arena (cuBLASLt and 16-byte vector loads need far less).
const WEIGHT_ALIGN: usize = 256;

/// Arena bytes for a weight of `bytes` bytes.
pub fn arena_size(bytes: usize) -> usize {
    bytes.next_multiple_of(WEIGHT_ALIGN)
}

impl CudaBackend {
    /// Allocates one buffer of `bytes` that the following `load_weight` calls fill in order
    /// (see [`arena_size`]); weights that do not fit get their own buffers.
    pub fn reserve_weights(&self, bytes: usize) -> Result<()> {
        let mem = Arc::new(self.gpu.alloc(bytes)?);
        *self.weights.borrow_mut() = Some(WeightArena { mem, used: 0 });
        Ok(())
    }

    /// Bytes of the weight arena filled so far (every weight of a loaded model: the arena is
    /// sized for them), alignment included.
    pub fn weight_arena_bytes(&self) -> usize {
        self.weights.borrow().as_ref().map_or(0, |a| a.used)
    }

    /// Uploads one weight into the arena when it fits, else into its own buffer.
    fn place_weight(&self, bytes: &[u8]) -> Result<(u64, Arc<DeviceBuffer>)> {
        if let Some(arena) = self.weights.borrow_mut().as_mut() {
            if arena.used + bytes.len() <= arena.mem.bytes {
                let ptr = arena.mem.ptr + arena.used as u64;
                self.gpu.upload_to(ptr, bytes)?;
                arena.used += arena_size(bytes.len());
                return Ok((ptr, arena.mem.clone()));
            }
        }
        let buf = self.gpu.upload(bytes)?;
        Ok((buf.ptr, Arc::new(buf)))
    }

    /// The start of `w` when the weights follow each other in memory (one matrix of their
    /// rows stacked), else `None`.
    pub(super) fn adjacent(w: &[&CudaWeight]) -> Option<u64> {
        let cols = w[0].cols;
        let stacked = w.windows(2).all(|p| {
            p[1].cols == cols
                && p[1].ptr == p[0].ptr + p[0].bytes as u64
                && p[0].bytes == arena_size(p[0].bytes)
        });
        stacked.then_some(w[0].ptr)
    }

    fn weight_bytes(&self, t: &RawTensor) -> Vec<u8> {
        if keeps_encoded(t.ty) {
            return t.bytes.as_slice().to_vec();
        }
        match (t.ty, self.dtype) {
            (GgmlType::BF16, DType::Bf16) | (GgmlType::F32, DType::F32) => {
                t.bytes.as_slice().to_vec()
            }
            (_, DType::F32) => t.to_f32().iter().flat_map(|v| v.to_le_bytes()).collect(),
            (_, DType::Bf16) => t
                .to_f32()
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
        }
    }

    /// Uploads `t` in the compute dtype, or encoded (into the arena when it fits).
    pub(super) fn new_weight(&self, t: &RawTensor) -> CudaWeight {
        let quant = keeps_encoded(t.ty).then_some(t.ty);
        if quant.is_some() {
            self.record(self.size_dequant_scratch(t.rows, t.cols));
        }
        let bytes = self.weight_bytes(t);
        let (ptr, mem) = self.place_weight(&bytes).unwrap_or_else(|e| {
            self.record(Err(e));
            (0, Arc::new(DeviceBuffer { ptr: 0, bytes: 0 }))
        });
        CudaWeight {
            ptr,
            bytes: bytes.len(),
            _mem: mem,
            rows: t.rows,
            cols: t.cols,
            quant,
        }
    }
}
