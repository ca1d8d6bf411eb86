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
    /// A Mixture-of-Experts block in place of the dense one (whose three matrices are then
    /// empty: 0 rows).
    pub moe: Option<MoeWeights>,
    /// Gemma's norms of the attention output and of the feed-forward output, applied before
    /// each is added to the residual stream.
    pub post_attn_norm: Option<Vec<f32>>,
    pub post_ffn_norm: Option<Vec<f32>>,
}

/// One expert's feed-forward matrices (`down · (silu(gate · x) ⊙ up · x)`).
#[derive(Debug, Clone)]
pub struct ExpertWeights {
    pub gate: RawTensor,
    pub up: RawTensor,
    pub down: RawTensor,
}

/// A Mixture-of-Experts feed-forward block (Qwen3-MoE, Mixtral): a router scores the experts
/// for each token, and the token runs through the `top_k` most probable ones, their outputs
/// weighted by those probabilities.
#[derive(Debug, Clone)]
pub struct MoeWeights {
    /// `[experts, hidden]`: the router's logits.
    pub router: RawTensor,
    pub experts: Vec<ExpertWeights>,
    pub top_k: usize,
    /// Rescale the chosen probabilities to sum to 1 (Mixtral always; Qwen's
    /// `norm_topk_prob`); otherwise they are the softmax over all experts.
    pub norm_topk_prob: bool,
}

/// The experts of each of `n` tokens and their weights, from the router's logits (row-major
/// `[n, experts]`): `(token, expert, weight)` triples, `top_k` a token (see
/// [`MoeWeights::norm_topk_prob`]). Ties go to the lower expert index.
pub fn route_tokens(
    logits: &[f32],
    n: usize,
    e: usize,
    top_k: usize,
    norm_topk_prob: bool,
) -> Vec<(usize, usize, f32)> {
    {
        let mut out = Vec::with_capacity(n * top_k);
        for (t, row) in logits.chunks_exact(e).take(n).enumerate() {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exp: Vec<f32> = row.iter().map(|&l| (l - max).exp()).collect();
            let total: f32 = exp.iter().sum();
            let mut order: Vec<usize> = (0..e).collect();
            order.sort_by(|&a, &b| exp[b].total_cmp(&exp[a]).then(a.cmp(&b)));
            let chosen = &order[..top_k.min(e)];
            let kept: f32 = chosen.iter().map(|&i| exp[i]).sum();
            let denom = if norm_topk_prob { kept } else { total };
            out.extend(chosen.iter().map(|&i| (t, i, exp[i] / denom)));
        }
        out
    }
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
    /// The layer's seven matrices: q, k, v, o, gate, up, down (the dense three are empty in a
    /// Mixture-of-Experts layer; see [`Self::expert_matrices`]).
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

impl LayerWeights {
    /// The router and every expert's matrices of a Mixture-of-Experts layer.
    pub fn expert_matrices(&self) -> impl Iterator<Item = &RawTensor> {
        self.moe.iter().flat_map(|m| {
            std::iter::once(&m.router)
                .chain(m.experts.iter().flat_map(|x| [&x.gate, &x.up, &x.down]))
        })
    }
}

impl ModelWeights {
    /// Every layer's matrices (experts included), layer after layer.
    pub fn layer_matrices(&self) -> impl Iterator<Item = &RawTensor> {
        self.layers
            .iter()
            .flat_map(|l| l.matrices().into_iter().chain(l.expert_matrices()))
    }

    /// What this model needs that the CUDA backend's kernels do not do yet, in words; `None`
    /// when the GPU can run it. (`device: auto` then picks the CPU for it.)
    /// Every family this crate reads runs there (Gemma's pieces, experts); what the kernels'
    /// shapes exclude is a head size past 128 (Gemma 2 9B and Gemma 3 1B to 12B use 256), an
    /// odd one, or query heads that do not share kv heads evenly. Partial rotation (Phi-4-mini)
    /// is written for the GPU but has not yet been checked against transformers there, so it
    /// stays on the CPU unless `KR_CUDA_PARTIAL_ROPE=1` (kr-cuda's tuning switch, read here
    /// because placement asks this before any backend exists).
    pub fn beyond_the_gpu_kernels(&self) -> Option<String> {
        let c = &self.config;
        let partial_allowed = std::env::var("KR_CUDA_PARTIAL_ROPE").is_ok_and(|v| v.trim() == "1");
        if c.partial_rotary() && !partial_allowed {
            return Some(
                "partial rotary embeddings (their GPU kernels have not yet been checked on a GPU)"
                    .into(),
            );
        }
        let fits = c.head_dim <= 128 && c.head_dim % 2 == 0 && c.num_heads % c.num_kv_heads == 0;
        (!fits).then(|| {
            format!(
                "head_dim {} with {} heads / {} kv heads (the CUDA kernels take an even head_dim up to 128)",
                c.head_dim, c.num_heads, c.num_kv_heads
            )
        })
    }

    /// Whether some layer routes tokens to experts (its forward pass reads the router's
    /// choices on the host, so a step cannot be captured in a CUDA graph).
    pub fn has_experts(&self) -> bool {
        self.layers.iter().any(|l| l.moe.is_some())
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
    fn routing_picks_the_top_k_and_normalises_when_asked() {
        // Two tokens, three experts.
        let logits = [0.0, 2.0, 1.0, 5.0, 5.0, 0.0];
        let r = route_tokens(&logits, 2, 3, 2, true);
        let (t0, t1) = (&r[..2], &r[2..]);
        assert_eq!((t0[0].1, t0[1].1), (1, 2));
        assert!((t0[0].2 + t0[1].2 - 1.0).abs() < 1e-6);
        assert_eq!((t1[0].1, t1[1].1), (0, 1), "a tie goes to the lower index");
        let raw = route_tokens(&logits, 2, 3, 2, false);
        let total: f32 = [0.0f32, 2.0, 1.0].iter().map(|l| (l - 2.0).exp()).sum();
        assert!((raw[0].2 - 1.0 / total).abs() < 1e-6);
    }

    #[test]
    fn row_range_takes_whole_rows() {
        let t = RawTensor::from_f32("w", 3, 2, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let mid = t.row_range("w.mid", 1, 2);
        assert_eq!((mid.rows, mid.cols, mid.name.as_str()), (2, 2, "w.mid"));
        assert_eq!(mid.to_f32(), vec![3.0, 4.0, 5.0, 6.0]);
    }
}
