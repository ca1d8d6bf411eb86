//! Model weights as the file stores them: encoded bytes plus type and shape. Backends turn
//! these into their own representation (the CPU backend borrows the memory map as is).
//!
//! Invariant: a [`RawTensor`] of `rows × cols` holds exactly `ty.bytes_for(rows*cols)` bytes,
//! and `cols` is a multiple of the type's block size, so every row starts on a block.

use crate::config::ModelConfig;
use crate::quant::{dequantize, GgmlType};
use memmap2::Mmap;
use std::sync::Arc;

/// Bytes of a tensor: borrowed from a memory-mapped file or owned.
#[derive(Clone)]
pub enum TensorBytes {
    Mapped {
        map: Arc<Mmap>,
        offset: usize,
        len: usize,
    },
    Owned(Arc<Vec<u8>>),
}

impl TensorBytes {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Self::Mapped { map, offset, len } => &map[*offset..*offset + *len],
            Self::Owned(v) => v,
        }
    }
}

/// A 2-D weight matrix (`rows` output features, each a contiguous row of `cols`).
#[derive(Clone)]
pub struct RawTensor {
    pub name: String,
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub bytes: TensorBytes,
}

impl std::fmt::Debug for RawTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RawTensor({} {} {}x{})",
            self.name,
            self.ty.name(),
            self.rows,
            self.cols
        )
    }
}

impl RawTensor {
    /// An owned f32 tensor.
    pub fn from_f32(name: &str, rows: usize, cols: usize, data: &[f32]) -> Self {
        assert_eq!(
            data.len(),
            rows * cols,
            "{name}: data does not match its shape"
        );
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self {
            name: name.to_string(),
            ty: GgmlType::F32,
            rows,
            cols,
            bytes: TensorBytes::Owned(Arc::new(bytes)),
        }
    }

    pub fn row_bytes(&self) -> usize {
        self.ty.bytes_for(self.cols)
    }

    /// Decodes row `r` into `out` (length `cols`).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let rb = self.row_bytes();
        dequantize(self.ty, &self.bytes.as_slice()[r * rb..(r + 1) * rb], out);
    }

    /// This matrix with column `c` of every row multiplied by `gain[c]`, as f32: an RMSNorm's
    /// gain folded into the projection that reads the norm's output (`(x ⊙ g)·Wᵀ = x·(W
    /// diag g)ᵀ`).
    pub fn with_column_gain(&self, gain: &[f32]) -> Self {
        assert_eq!(
            gain.len(),
            self.cols,
            "{}: gain does not match its columns",
            self.name
        );
        let mut data = self.to_f32();
        for row in data.chunks_exact_mut(self.cols) {
            row.iter_mut().zip(gain).for_each(|(w, g)| *w *= g);
        }
        Self::from_f32(&self.name, self.rows, self.cols, &data)
    }

    /// Rows `start..start + n` as a tensor of their own, sharing the bytes (a fused
    /// projection split into its parts: Phi-3's qkv and gate_up). Every row holds
    /// `row_bytes()` bytes, so the slice is whole rows of the same type.
    pub fn row_range(&self, name: &str, start: usize, n: usize) -> Self {
        assert!(
            start + n <= self.rows,
            "{}: rows {start}..{} of {}",
            self.name,
            start + n,
            self.rows
        );
        let rb = self.row_bytes();
        let bytes = match &self.bytes {
            TensorBytes::Mapped { map, offset, .. } => TensorBytes::Mapped {
                map: map.clone(),
                offset: offset + start * rb,
                len: n * rb,
            },
            TensorBytes::Owned(v) => {
                TensorBytes::Owned(Arc::new(v[start * rb..(start + n) * rb].to_vec()))
            }
        };
        Self {
            name: name.to_string(),
            ty: self.ty,
            rows: n,
            cols: self.cols,
            bytes,
        }
    }

    /// The whole tensor as f32 (for small tensors: norms, biases, tests).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        dequantize(self.ty, self.bytes.as_slice(), &mut out);
        out
    }
}

/// Weights of one decoder layer.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    pub wq: RawTensor,
    pub wk: RawTensor,
    pub wv: RawTensor,
    pub wo: RawTensor,
    /// Qwen2's q/k/v projection biases.
    pub q_bias: Option<Vec<f32>>,
    pub k_bias: Option<Vec<f32>>,
    pub v_bias: Option<Vec<f32>>,
    /// Qwen3's per-head RMSNorm of q and k (length head_dim).
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    pub w_gate: RawTensor,
    pub w_up: RawTensor,
    pub w_down: RawTensor,
}

/// All weights of a decoder-only model.
#[derive(Debug, Clone)]
pub struct ModelWeights {
    pub config: ModelConfig,
    pub embedding: RawTensor,
    pub layers: Vec<LayerWeights>,
    pub final_norm: Vec<f32>,
    /// `None` when the output projection is tied to the embedding.
    pub lm_head: Option<RawTensor>,
}

impl LayerWeights {
    /// The layer's seven matrices: q, k, v, o, gate, up, down.
    pub fn matrices(&self) -> [&RawTensor; 7] {
        [
            &self.wq,
            &self.wk,
            &self.wv,
            &self.wo,
            &self.w_gate,
            &self.w_up,
            &self.w_down,
        ]
    }
}

impl ModelWeights {
    /// Every layer's matrices, layer after layer.
    pub fn layer_matrices(&self) -> impl Iterator<Item = &RawTensor> {
        self.layers.iter().flat_map(LayerWeights::matrices)
    }

    /// Bytes of all weight matrices as stored.
    pub fn weight_bytes(&self) -> usize {
        let bytes = |t: &RawTensor| t.bytes.as_slice().len();
        bytes(&self.embedding)
            + self.layer_matrices().map(bytes).sum::<usize>()
            + self.lm_head.as_ref().map_or(0, bytes)
    }

    /// Bytes of weights one decode step reads when float matrices are stored with
    /// `elem_size`-byte elements and quantised ones as encoded: every layer's matrices and the
    /// output projection (the embedding table when tied; otherwise the table is only gathered
    /// from, a row a token).
    pub fn decode_bytes(&self, elem_size: usize) -> usize {
        let bytes = |t: &RawTensor| match t.ty.is_quantized() {
            true => t.bytes.as_slice().len(),
            false => t.rows * t.cols * elem_size,
        };
        let layers: usize = self.layer_matrices().map(bytes).sum();
        layers + bytes(self.lm_head.as_ref().unwrap_or(&self.embedding))
    }

    /// Values of the matrices [`Self::decode_bytes`] counts (a step's multiply-adds per token).
    pub fn decode_params(&self) -> usize {
        let elems = |t: &RawTensor| t.rows * t.cols;
        let layers: usize = self.layer_matrices().map(elems).sum();
        layers + elems(self.lm_head.as_ref().unwrap_or(&self.embedding))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_gain_scales_every_row_by_column() {
        let t = RawTensor::from_f32("w", 2, 3, &[1.0, 2.0, 3.0, -4.0, 5.0, -6.0]);
        let folded = t.with_column_gain(&[0.5, 2.0, -1.0]);
        assert_eq!((folded.rows, folded.cols, folded.ty), (2, 3, GgmlType::F32));
        assert_eq!(folded.to_f32(), vec![0.5, 4.0, -3.0, -2.0, 10.0, 6.0]);
    }

    #[test]
    fn row_range_takes_whole_rows() {
        let t = RawTensor::from_f32("w", 3, 2, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let mid = t.row_range("w.mid", 1, 2);
        assert_eq!((mid.rows, mid.cols, mid.name.as_str()), (2, 2, "w.mid"));
        assert_eq!(mid.to_f32(), vec![3.0, 4.0, 5.0, 6.0]);
    }
}
