//! Paged attention launches: decode (one query per sequence), tensor-core prefill (bf16,
//! head_dim 64 or 128, compute capability 8.0+) and the CUDA-core kernel for everything else.
//!
//! Invariants: every kernel reads the step metadata uploaded by `begin_step` at fixed
//! addresses; both prefill kernels take the same arguments and the work items and tiles that
//! `meta::pack` wrote, so either can run any step.

use super::{CudaBackend, CudaKvCache, CudaTensor, DType};
use crate::error::driver;
use crate::meta::{tile_q, ATTENTION_ROWS};
use cudarc::driver::LaunchConfig;

/// Query heads per kv head the decode attention kernel handles (DEC_MAX_GROUP in the kernel).
const DECODE_MAX_GROUP: usize = 8;
/// Most key splits per (sequence, kv head) of the split-K decode kernel (DS_MAX_SPLITS).
const DECODE_MAX_SPLITS: usize = 16;
/// Keys per shared-memory chunk of the CUDA-core prefill kernel (ATT_KC in the kernel).
const ATT_KC: usize = 32;

/// Arrival counters of the split-K decode kernel: one per (sequence, kv head) of a step that
/// uses it (fewer than the SMs).
pub(super) const SPLIT_COUNTERS: usize = 1024;

/// Tensor-core attention kernels, bf16 only (`<name>_bf16`), one per head size.
pub const MMA_KERNEL_NAMES: [&str; 2] = ["attention_mma64", "attention_mma128"];

/// Dynamic shared memory of the CUDA-core prefill kernel for `head_dim`.
pub(super) fn attention_smem(head_dim: usize) -> usize {
    4 * (ATTENTION_ROWS * head_dim + ATT_KC * (head_dim + 1) + ATT_KC * head_dim)
}

impl CudaBackend {
    /// Causal attention of the step's queries over their cached keys and values, into `out`.
    pub(super) fn attention_into(
        &self,
        out: &CudaTensor,
        q: &CudaTensor,
        layer: usize,
        cache: &CudaKvCache,
        num_heads: usize,
    ) {
        let l = cache.layout;
        let group = num_heads / l.num_kv_heads;
        if self.step.get().decode && group <= DECODE_MAX_GROUP {
            return self.decode_attention(out, q, layer, cache, num_heads);
        }
        let mma = match l.head_dim {
            64 => Some(MMA_KERNEL_NAMES[0]),
            128 => Some(MMA_KERNEL_NAMES[1]),
            _ => None,
        }
        .filter(|_| self.dtype == DType::Bf16 && self.gpu.info.compute_capability.0 >= 8);
        let (name, threads, smem) = match mma {
            Some(name) => (name, 128, 0),
            None => ("attention", 256, attention_smem(l.head_dim)),
        };
        let cfg = LaunchConfig {
            grid_dim: (self.step.get().work.max(1) as u32, l.num_kv_heads as u32, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        let o = self.meta_layout.offsets();
        let (work, ql) = (self.meta_ptr(o.work), self.meta_ptr(o.q_len));
        let tile = tile_q(group) as i32;
        let (op, qp, kc, vc) = (out.ptr, q.ptr, cache.k(layer), cache.v(layer));
        let [qs, cl, bt] = self.seq_meta_ptrs();
        let [stride, bs, nh, nkv, hd] = self.attn_geometry(cache, num_heads);
        let scale = 1.0 / (l.head_dim as f32).sqrt();
        launch!(
            self, name, cfg, op, qp, kc, vc, work, qs, ql, cl, bt, stride, bs, nh, nkv, hd, tile,
            scale
        );
    }

    /// One query per sequence. With fewer (sequence, kv head) pairs than SMs the keys of each
    /// are split over several blocks (`attention_decode_split`, about two blocks per SM, the
    /// last block merging); otherwise one block per pair, warps splitting the keys.
    fn decode_attention(
        &self,
        out: &CudaTensor,
        q: &CudaTensor,
        layer: usize,
        cache: &CudaKvCache,
        num_heads: usize,
    ) {
        let l = cache.layout;
        let seqs = self.step.get().seqs.max(1);
        let pairs = seqs * l.num_kv_heads;
        let sms = self.gpu.info.multiprocessors;
        let (op, qp, kc, vc) = (out.ptr, q.ptr, cache.k(layer), cache.v(layer));
        let [qs, cl, bt] = self.seq_meta_ptrs();
        let [stride, bs, nh, nkv, hd] = self.attn_geometry(cache, num_heads);
        let scale = 1.0 / (l.head_dim as f32).sqrt();
        // Few pairs: split each pair's keys over blocks (the non-split kernel takes and ignores
        // the scratch and counters, so both launch alike).
        let splits = if pairs < sms && pairs <= SPLIT_COUNTERS {
            (2 * sms / pairs).clamp(1, DECODE_MAX_SPLITS)
        } else {
            1
        };
        let (name, threads) = if splits > 1 {
            ("attention_decode_split", 128)
        } else {
            ("attention_decode", 256)
        };
        let group = num_heads / l.num_kv_heads;
        let rows = if splits > 1 {
            pairs * splits * group
        } else {
            1
        };
        let partial = self.alloc_elems(rows, l.head_dim + 2, 4);
        let (pp, cp) = (partial.ptr, self.split_counters.ptr);
        let cfg = LaunchConfig {
            grid_dim: (seqs as u32, l.num_kv_heads as u32, splits as u32),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        launch!(
            self, name, cfg, op, qp, kc, vc, qs, cl, bt, stride, bs, nh, nkv, hd, scale, pp, cp
        );
    }

    /// Device addresses of the per-sequence query starts, context lengths and block tables.
    fn seq_meta_ptrs(&self) -> [u64; 3] {
        let o = self.meta_layout.offsets();
        [o.q_start, o.ctx_len, o.block_tables].map(|f| self.meta_ptr(f))
    }

    /// Block-table stride, block size, query heads, kv heads and head size, as kernel ints.
    fn attn_geometry(&self, cache: &CudaKvCache, num_heads: usize) -> [i32; 5] {
        let l = cache.layout;
        [
            self.meta_layout.bt_stride,
            l.block_size,
            num_heads,
            l.num_kv_heads,
            l.head_dim,
        ]
        .map(|v| v as i32)
    }
}
