//! The fp8 KV cache (`CudaModelOptions::kv_fp8`): E4M3 codes with one f32 scale per (slot,
//! kv head), `amax / 448` of the row (the codec and scaling of `kr_model::quant::fp8`).
//! `rope_write_kv` writes them; fp8 variants of the tiled decode kernel (decode_tiles.cu, which
//! widens each tile to bf16 once per block) and of the tensor-core prefill kernel
//! (attention.cu) read them.
//!
//! Invariants: only with bf16 compute, head_dim 64 or 128 and compute capability 8.0+
//! (`CudaModel::load` refuses the rest); decode steps take the unfused path (RoPE and the
//! write in `rope_write_kv`, then attention), and every decode step's splits merge through
//! global memory, one (sequence, kv head) pair per arrival counter.

use super::attention::SPLIT_COUNTERS;
use super::{CudaBackend, CudaKvCache, CudaTensor};
use crate::error::{driver, CudaError};
use cudarc::driver::LaunchConfig;

/// The fp8-cache kernels (bf16 only): decode for head_dim 64 and 128, then prefill.
pub const KV8_KERNELS: [&str; 4] = [
    "attention_decode_tiles_kv8_64",
    "attention_decode_tiles_kv8_128",
    "attention_mma_kv8_64",
    "attention_mma_kv8_128",
];

/// Keys per tile of the fp8 decode kernel (DT_KT).
const TILE_KEYS: usize = 32;

/// Dynamic shared memory of the fp8 decode kernel (`DecodeTiles8::SMEM`): two bf16 tiles of
/// key and value rows (padded by 8 elements), DT_STAGES staged tiles of code rows (padded by
/// 16 bytes), and each tile's scales.
pub fn decode_smem(head_dim: usize) -> usize {
    let stages = super::attention::decode_tile_stages();
    let wide = 2 * 2 * TILE_KEYS * (head_dim + 8) * 2;
    let staged = stages * 2 * TILE_KEYS * (head_dim + 16);
    wide + staged + (2 + stages) * (2 * TILE_KEYS * 4)
}

impl CudaBackend {
    /// Attention of the step's queries over an fp8 cache (keys and values already written).
    pub(super) fn kv8_attention_into(
        &self,
        out: &CudaTensor,
        q: &CudaTensor,
        layer: usize,
        cache: &CudaKvCache,
        num_heads: usize,
    ) {
        let l = cache.layout;
        let big = usize::from(l.head_dim == 128);
        let (op, qp, k8, v8) = (out.ptr, q.ptr, cache.k(layer), cache.v(layer));
        let (ks, vs) = (cache.k_scales(layer), cache.v_scales(layer));
        let [qs, cl, bt] = self.seq_meta_ptrs();
        let [stride, bs, nh, nkv, hd] = self.attn_geometry(cache, num_heads);
        let (scale, win, cap) = (l.attn_scale, l.window(layer) as i32, l.softcap);
        if !self.decode_kernel_applies(num_heads, l) {
            let smem = super::attention::mma_smem(l.head_dim);
            let (cfg, [work, ql], tile) = self.prefill_launch(num_heads, l, 128, smem);
            let name = KV8_KERNELS[2 + big];
            return launch!(
                self, name, cfg, op, qp, k8, v8, ks, vs, work, qs, ql, cl, bt, stride, bs, nh, nkv,
                hd, tile, scale, win, cap
            );
        }
        let seqs = self.step.get().seqs.max(1);
        let pairs = seqs * l.num_kv_heads;
        if pairs > SPLIT_COUNTERS {
            return self.record(Err(CudaError::Unsupported(format!(
                "{pairs} (sequence, kv head) pairs in one fp8-cache decode step (at most {SPLIT_COUNTERS})"
            ))));
        }
        // As the bf16 kernels split (see `attention::decode_plan`), always merged through
        // global memory.
        let (splits, min_keys) = match self.step.get().long_decode {
            true => self.long_splits(pairs),
            false => (self.short_splits(pairs, self.max_decode_splits), 0),
        };
        let group = num_heads / l.num_kv_heads;
        let partial = self.alloc_elems(pairs * splits * group, l.head_dim + 2, 4);
        let (pp, cp) = (partial.ptr, self.split_counters.ptr);
        let cfg = LaunchConfig {
            grid_dim: (seqs as u32, l.num_kv_heads as u32, splits as u32),
            block_dim: (256, 1, 1),
            shared_mem_bytes: decode_smem(l.head_dim) as u32,
        };
        let (name, min_keys) = (KV8_KERNELS[big], min_keys as i32);
        launch!(
            self, name, cfg, op, qp, k8, v8, ks, vs, qs, cl, bt, stride, bs, nh, nkv, hd, scale,
            pp, cp, min_keys, win, cap
        );
    }
}
