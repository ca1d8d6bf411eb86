//! Paged attention launches: RoPE with the KV-cache write (`rope_write_kv`), decode (one
//! query per sequence), tensor-core prefill (bf16, head_dim 64 or 128, compute capability
//! 8.0+) and the CUDA-core kernel for everything else; an fp8 cache goes to `kv8`.
//!
//! Invariants: every kernel reads the step metadata uploaded by `begin_step` at fixed
//! addresses; in decode steps RoPE and the KV write happen inside the attention kernel (or, on
//! the unfused path, in `rope_write_kv` just before it), and nothing else reads the new
//! token's cache slot during the step; both prefill kernels take
//! the same arguments and the work items and tiles that `meta::pack` wrote, so either can run
//! any step.

use super::launch::KernelLaunch;
use super::{interleaved_flag, per_row, CudaBackend, CudaKvCache, CudaTensor, DType};
use crate::error::driver;
use crate::meta::{tile_q, ATTENTION_ROWS};
use crate::tuning::switched_off;
use cudarc::driver::LaunchConfig;
use kr_model::{KvLayout, Rope};

/// Query heads per kv head the decode attention kernel handles (DEC_MAX_GROUP in the kernel).
const DECODE_MAX_GROUP: usize = 8;
/// Most key splits per (sequence, kv head) of the split-K decode kernel (DS_MAX_SPLITS).
const DECODE_MAX_SPLITS: usize = 16;
/// Most splits of the cluster decode kernel: the portable cluster size (DS_MAX_CLUSTER).
const DECODE_MAX_CLUSTER: usize = 8;
/// Most key splits of the tiled decode kernel in long-context steps (DS_MAX_LONG_SPLITS).
pub(crate) const LONG_DECODE_MAX_SPLITS: usize = 64;
/// Fewest keys per split in long-context steps: shorter chunks cost more to merge than their
/// parallelism gains (a multiple of the tile's 32 keys).
const LONG_DECODE_MIN_KEYS: usize = 128;
/// Keys per shared-memory chunk of the CUDA-core prefill kernel (ATT_KC in the kernel).
const ATT_KC: usize = 32;

/// Arrival counters of the split-K decode kernel: one per (sequence, kv head) of a step that
/// uses it (fewer than the SMs).
pub(super) const SPLIT_COUNTERS: usize = 8192;

/// Tiled split decode kernels (decode_tiles.cu) for head_dim 64 and 128: global merge, then
/// cluster merge.
pub const DECODE_TILES_KERNELS: [[&str; 2]; 2] = [
    [
        "attention_decode_tiles64",
        "attention_decode_tiles_cluster64",
    ],
    [
        "attention_decode_tiles128",
        "attention_decode_tiles_cluster128",
    ],
];
/// Keys per tile of the tiled decode kernels (DT_KT).
const DECODE_TILE_KEYS: usize = 32;

/// Tensor-core attention kernels, bf16 only (`<name>_bf16`), one per head size.
pub const MMA_KERNEL_NAMES: [&str; 2] = ["attention_mma64", "attention_mma128"];

/// The raw k and v of a decode step whose RoPE and KV write the attention kernel does.
struct FusedRope<'a> {
    k: u64,
    v: u64,
    rope: &'a Rope,
}

/// `KR_CUDA_DECODE_SPLITS` clamped to 1..=DECODE_MAX_SPLITS (default: the maximum).
pub(super) fn max_decode_splits() -> usize {
    crate::tuning::value("KR_CUDA_DECODE_SPLITS")
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map_or(DECODE_MAX_SPLITS, |n| n.clamp(1, DECODE_MAX_SPLITS))
}

/// How a long-context decode step splits its keys (see `meta::LONG_DECODE_CONTEXT`): the
/// grid has `splits` blocks per (sequence, kv head) whatever the lengths, so one graph serves
/// them all, and each block takes `max(ctx / splits, min_keys)` keys; blocks left without keys
/// exit at once, so short sequences of the batch pay for few splits.
#[derive(Clone, Copy, Debug)]
pub(super) struct LongDecodeSplits {
    pub most: usize,
    pub min_keys: usize,
}

impl LongDecodeSplits {
    /// The defaults, less what `KR_CUDA_LONG_DECODE_SPLITS` / `_KEYS` set for comparison.
    pub(super) fn from_env() -> Self {
        let read =
            |name: &str| crate::tuning::value(name).and_then(|v| v.trim().parse::<usize>().ok());
        Self::clamped(
            read("KR_CUDA_LONG_DECODE_SPLITS").unwrap_or(LONG_DECODE_MAX_SPLITS),
            read("KR_CUDA_LONG_DECODE_KEYS").unwrap_or(LONG_DECODE_MIN_KEYS),
        )
    }

    /// 1..=64 splits of at least 32..=65536 keys, a multiple of the tile's 32.
    fn clamped(most: usize, min_keys: usize) -> Self {
        LongDecodeSplits {
            most: most.clamp(1, LONG_DECODE_MAX_SPLITS),
            min_keys: min_keys.clamp(32, 65536) / 32 * 32,
        }
    }

    /// Splits per pair for `pairs` (sequence, kv head) pairs on `sms` SMs: about four blocks
    /// per SM when every sequence is long.
    pub(super) fn splits(&self, pairs: usize, sms: usize) -> usize {
        (4 * sms).div_ceil(pairs.max(1)).clamp(1, self.most)
    }
}

/// One decode-attention launch: kernel, dynamic shared memory, splits per (sequence, kv head),
/// whether they merge in a cluster, and the fewest keys per split (0: every split takes
/// `ctx / splits` keys, even none).
struct DecodePlan {
    name: &'static str,
    smem: usize,
    splits: usize,
    cluster: bool,
    min_keys: usize,
}

/// Which split decode kernel runs: the tiled one (head_dim 64 / 128) or the generic one, and
/// whether the splits merge inside a thread-block cluster (sm_90+) or through global memory.
#[derive(Clone, Copy, Debug)]
pub struct DecodeKernels {
    pub tiles: bool,
    pub cluster: bool,
}

impl DecodeKernels {
    /// The defaults (tiles; clusters on sm_90+), less what `KR_CUDA_DECODE_TILES=0` and
    /// `KR_CUDA_DECODE_CLUSTER=0` turn off for comparison.
    pub(super) fn from_env(compute_capability: (i32, i32)) -> Self {
        DecodeKernels {
            tiles: !switched_off("KR_CUDA_DECODE_TILES"),
            cluster: !switched_off("KR_CUDA_DECODE_CLUSTER"),
        }
        .supported_on(compute_capability)
    }

    /// These kernels less clusters below compute capability 9.0.
    fn supported_on(mut self, compute_capability: (i32, i32)) -> Self {
        self.cluster &= compute_capability.0 >= 9;
        self
    }
}

/// Tile buffers of the tiled decode kernels (DT_STAGES, compiled in: see
/// [`decode_stages_define`]): one tile in flight while one is computed, or two with
/// `KR_CUDA_DECODE_STAGES=3`. Three buffers cost a bf16 head_dim-128 block 17 KiB more shared
/// memory, so fewer blocks fit an SM; on an H100 that made 32k decode slower (docs/gpu-tuning.md).
pub(super) fn decode_tile_stages() -> usize {
    static STAGES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *STAGES.get_or_init(|| {
        crate::tuning::value("KR_CUDA_DECODE_STAGES")
            .and_then(|v| v.trim().parse().ok())
            .filter(|n| matches!(n, 2 | 3))
            .unwrap_or(2)
    })
}

/// The NVRTC define that gives the tiled decode kernels [`decode_tile_stages`] buffers.
pub fn decode_stages_define() -> String {
    format!("-DDT_STAGES={}", decode_tile_stages())
}

/// Dynamic shared memory of a tiled decode kernel: DT_STAGES buffers of DT_KT key and value
/// rows, each padded by 16 bytes.
pub(super) fn decode_tiles_smem(head_dim: usize, elem_size: usize) -> usize {
    decode_tile_stages() * 2 * DECODE_TILE_KEYS * (head_dim + 16 / elem_size) * elem_size
}

/// Keys per shared-memory tile of the tensor-core prefill kernels (MMA_KT).
const MMA_TILE_KEYS: usize = 64;

/// Dynamic shared memory of the tensor-core prefill kernels (bf16 or fp8 cache): two tiles of
/// MMA_KT key and value rows of bf16, each padded by 8 elements.
pub(super) fn mma_smem(head_dim: usize) -> usize {
    2 * 2 * MMA_TILE_KEYS * (head_dim + 8) * 2
}

/// Dynamic shared memory of the CUDA-core prefill kernel for `head_dim`.
pub(super) fn attention_smem(head_dim: usize) -> usize {
    4 * (ATTENTION_ROWS * head_dim + ATT_KC * (head_dim + 1) + ATT_KC * head_dim)
}

impl CudaBackend {
    /// Uploads the RoPE frequencies at load time, so that no step allocates.
    pub fn prepare_rope(&self, rope: &Rope) {
        self.inv_freq_ptr(rope);
    }

    /// The RoPE frequencies on the device (one table per distinct set, e.g. Gemma 3's local
    /// and global bases), uploaded on first use; 0, the error recorded, when that fails.
    fn inv_freq_ptr(&self, rope: &Rope) -> u64 {
        let known = self
            .inv_freq
            .borrow()
            .iter()
            .find(|(f, _)| *f == rope.inv_freq)
            .map(|(_, b)| b.ptr);
        if let Some(ptr) = known {
            return ptr;
        }
        let Some(b) = self.upload_recorded(&rope.inv_freq) else {
            return 0;
        };
        let ptr = b.ptr;
        self.inv_freq.borrow_mut().push((rope.inv_freq.clone(), b));
        ptr
    }

    /// Chooses the split decode kernel (for tests that check each); clusters are ignored
    /// below compute capability 9.0. The default comes from `DecodeKernels::from_env`.
    pub fn set_decode_kernels(&self, k: DecodeKernels) {
        let cc = self.gpu.info.compute_capability;
        self.decode_kernels.set(k.supported_on(cc));
    }

    /// Sets the most splits and fewest keys per split of long-context decode steps (for tests
    /// that check several), clamped as `KR_CUDA_LONG_DECODE_SPLITS` / `_KEYS` are.
    pub fn set_long_decode_splits(&self, most: usize, min_keys: usize) {
        self.long_decode_splits
            .set(LongDecodeSplits::clamped(most, min_keys));
    }

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
        if cache.fp8() {
            return self.kv8_attention_into(out, q, layer, cache, num_heads);
        }
        if self.decode_kernel_applies(num_heads, l) {
            return self.decode_attention(out, q, layer, cache, num_heads, None);
        }
        let mma = match l.head_dim {
            64 => Some(MMA_KERNEL_NAMES[0]),
            128 => Some(MMA_KERNEL_NAMES[1]),
            _ => None,
        }
        .filter(|_| self.dtype == DType::Bf16 && self.gpu.info.compute_capability.0 >= 8);
        let (name, threads, smem) = match mma {
            Some(name) => (name, 128, mma_smem(l.head_dim)),
            None => ("attention", 256, attention_smem(l.head_dim)),
        };
        let (cfg, [work, ql], tile) = self.prefill_launch(num_heads, l, threads, smem);
        let (op, qp, kc, vc) = (out.ptr, q.ptr, cache.k(layer), cache.v(layer));
        let [qs, cl, bt] = self.seq_meta_ptrs();
        let [stride, bs, nh, nkv, hd] = self.attn_geometry(cache, num_heads);
        let (scale, win, cap) = (l.attn_scale, l.window(layer) as i32, l.softcap);
        launch!(
            self, name, cfg, op, qp, kc, vc, work, qs, ql, cl, bt, stride, bs, nh, nkv, hd, tile,
            scale, win, cap
        );
    }

    /// A prefill attention launch with `threads` per block and `smem` bytes of shared memory:
    /// one block per (work item, kv head); with the work items' and query lengths' device
    /// addresses and the query tile, which every prefill kernel takes.
    pub(super) fn prefill_launch(
        &self,
        num_heads: usize,
        l: KvLayout,
        threads: u32,
        smem: usize,
    ) -> (LaunchConfig, [u64; 2], i32) {
        let cfg = LaunchConfig {
            grid_dim: (self.step.get().work.max(1) as u32, l.num_kv_heads as u32, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        let o = self.meta_layout.offsets();
        let tile = tile_q(num_heads / l.num_kv_heads) as i32;
        (cfg, [o.work, o.q_len].map(|f| self.meta_ptr(f)), tile)
    }

    /// Splits per (sequence, kv head) and fewest keys per split of a long-context decode step
    /// (see [`LongDecodeSplits`]); in batch-invariant mode always the most splits, so that a
    /// sequence's split points follow its context alone.
    pub(super) fn long_splits(&self, pairs: usize) -> (usize, usize) {
        let long = self.long_decode_splits.get();
        let splits = match self.batch_invariant {
            true => long.most,
            false => long.splits(pairs, self.gpu.info.multiprocessors),
        };
        (splits, long.min_keys)
    }

    /// Splits per (sequence, kv head) of a short-context decode step, at most `most`: about
    /// two blocks per SM while there are fewer pairs than SMs (and than arrival counters),
    /// else none.
    pub(super) fn short_splits(&self, pairs: usize, most: usize) -> usize {
        let sms = self.gpu.info.multiprocessors;
        match pairs < sms && pairs <= SPLIT_COUNTERS {
            true => (2 * sms / pairs.max(1)).clamp(1, most),
            false => 1,
        }
    }

    /// Whether this step's attention runs on a decode kernel: one query per sequence, at most
    /// DECODE_MAX_GROUP query heads per kv head, head_dim at most 128 and a whole number of
    /// 16-byte vectors (the one-block-per-pair kernel reads key rows 16 bytes at a time).
    pub(super) fn decode_kernel_applies(&self, num_heads: usize, l: KvLayout) -> bool {
        let vectors = (l.head_dim * self.dtype.size()) % 16 == 0;
        self.step.get().decode
            && num_heads / l.num_kv_heads <= DECODE_MAX_GROUP
            && l.head_dim <= 128
            && vectors
    }

    /// RoPE, the KV write and attention: in decode steps one kernel does all three (the
    /// rotation in its prologue, see `DecodeRope` in decode_attention.cu), saving a launch per layer.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn rope_attention_into(
        &self,
        out: &CudaTensor,
        q: &mut CudaTensor,
        k: &mut CudaTensor,
        v: &CudaTensor,
        rope: &Rope,
        layer: usize,
        cache: &mut CudaKvCache,
        num_heads: usize,
    ) {
        // The decode kernels rotate whole heads with unscaled angles; a partial rotation goes
        // through rope_write_kv first.
        let whole = 2 * rope.inv_freq.len() == cache.layout.head_dim && rope.scale == 1.0;
        if self.decode_kernel_applies(num_heads, cache.layout) && !cache.fp8() && whole {
            let fused = FusedRope {
                k: k.ptr,
                v: v.ptr,
                rope,
            };
            return self.decode_attention(out, q, layer, cache, num_heads, Some(fused));
        }
        self.rope_write_kv(q, k, v, rope, layer, cache);
        self.attention_into(out, q, layer, cache, num_heads);
    }

    /// One query per sequence, with the kernel and splits of `decode_plan`. With `fused`, q, k and v are the raw projections and the kernel
    /// rotates and writes them.
    fn decode_attention(
        &self,
        out: &CudaTensor,
        q: &CudaTensor,
        layer: usize,
        cache: &CudaKvCache,
        num_heads: usize,
        fused: Option<FusedRope>,
    ) {
        let l = cache.layout;
        let seqs = self.step.get().seqs.max(1);
        let pairs = seqs * l.num_kv_heads;
        let (op, qp, kc, vc) = (out.ptr, q.ptr, cache.k(layer), cache.v(layer));
        let [qs, cl, bt] = self.seq_meta_ptrs();
        let [stride, bs, nh, nkv, hd] = self.attn_geometry(cache, num_heads);
        let scale = l.attn_scale;
        let plan = self.decode_plan(pairs, l.head_dim);
        let (splits, cluster, name, smem) = (plan.splits, plan.cluster, plan.name, plan.smem);
        let group = num_heads / l.num_kv_heads;
        // Partial states go through global memory only where the last block merges them.
        let rows = if splits > 1 && !cluster {
            pairs * splits * group
        } else {
            1
        };
        let partial = self.alloc_elems(rows, l.head_dim + 2, 4);
        let (pp, cp) = (partial.ptr, self.split_counters.ptr);
        let cfg = KernelLaunch {
            cfg: LaunchConfig {
                grid_dim: (seqs as u32, l.num_kv_heads as u32, splits as u32),
                block_dim: (256, 1, 1),
                shared_mem_bytes: smem as u32,
            },
            cluster_z: if splits > 1 && cluster {
                splits as u32
            } else {
                1
            },
        };
        let o = self.meta_layout.offsets();
        let (kn, vn, freq, inter) = match fused {
            Some(f) => (
                f.k,
                f.v,
                self.inv_freq_ptr(f.rope),
                interleaved_flag(f.rope),
            ),
            None => (0u64, 0u64, 0u64, 0i32),
        };
        let (pos, slots) = (self.meta_ptr(o.positions), self.meta_ptr(o.slots));
        let (min_keys, win, cap) = (plan.min_keys as i32, l.window(layer) as i32, l.softcap);
        launch!(
            self, name, cfg, op, qp, kc, vc, qs, cl, bt, stride, bs, nh, nkv, hd, scale, pp, cp,
            kn, vn, pos, slots, freq, inter, min_keys, win, cap
        );
    }

    /// The decode kernel of this step for `pairs` (sequence, kv head) pairs. Long-context steps
    /// (tiled kernels only) split each pair's keys over up to 64 blocks merged through global
    /// memory; other steps with fewer pairs than SMs split them over up to 16 (8 merged in a
    /// cluster); the rest run one block per pair.
    fn decode_plan(&self, pairs: usize, head_dim: usize) -> DecodePlan {
        let kernels = self.decode_kernels.get();
        let tiles_smem = decode_tiles_smem(head_dim, self.dtype.size());
        // Where the tiles do not fit a block's shared memory (f32, head_dim 128 below sm_80),
        // the generic kernels run.
        let tiled = match head_dim {
            64 => Some(0),
            128 => Some(1),
            _ => None,
        }
        .filter(|_| kernels.tiles && tiles_smem <= self.gpu.info.max_dynamic_smem);
        let long = self.step.get().long_decode || self.batch_invariant;
        if let Some(i) = tiled.filter(|_| long && pairs <= SPLIT_COUNTERS) {
            let (splits, min_keys) = self.long_splits(pairs);
            return DecodePlan {
                splits,
                cluster: false,
                min_keys,
                name: DECODE_TILES_KERNELS[i][0],
                smem: tiles_smem,
            };
        }
        let most = match kernels.cluster {
            true => self.max_decode_splits.min(DECODE_MAX_CLUSTER),
            false => self.max_decode_splits,
        };
        let splits = self.short_splits(pairs, most);
        let (name, smem) = match (splits > 1, tiled) {
            (false, _) => ("attention_decode", 0),
            (true, Some(i)) => (
                DECODE_TILES_KERNELS[i][usize::from(kernels.cluster)],
                tiles_smem,
            ),
            (true, None) if kernels.cluster => ("attention_decode_cluster", 0),
            (true, None) => ("attention_decode_split", 0),
        };
        DecodePlan {
            splits,
            cluster: kernels.cluster && splits > 1,
            min_keys: 0,
            name,
            smem,
        }
    }

    /// Rotates q and k in place and writes k and v into the cache slots of the step's tokens.
    pub(super) fn rope_write_kv(
        &self,
        q: &mut CudaTensor,
        k: &mut CudaTensor,
        v: &CudaTensor,
        rope: &Rope,
        layer: usize,
        cache: &mut CudaKvCache,
    ) {
        (q.norm_sums, k.norm_sums) = (0, 0);
        let l = cache.layout;
        let o = self.meta_layout.offsets();
        let (qp, kp, vp) = (q.ptr, k.ptr, v.ptr);
        let (pos, slots, freq) = (
            self.meta_ptr(o.positions),
            self.meta_ptr(o.slots),
            self.inv_freq_ptr(rope),
        );
        // An fp8 cache takes the codes and scales; the element cache pointers are then unused.
        let (kc, vc) = (cache.k(layer), cache.v(layer));
        let [k8, v8, ks, vs] = match cache.fp8() {
            true => [kc, vc, cache.k_scales(layer), cache.v_scales(layer)],
            false => [0u64; 4],
        };
        let nh = (q.cols / l.head_dim) as i32;
        let (nkv, hd) = (l.num_kv_heads as i32, l.head_dim as i32);
        let inter = interleaved_flag(rope);
        let (rot_half, rope_scale) = (rope.inv_freq.len().min(l.head_dim / 2) as i32, rope.scale);
        launch!(
            self,
            "rope_write_kv",
            per_row(q.rows),
            qp,
            kp,
            vp,
            pos,
            slots,
            freq,
            kc,
            vc,
            nh,
            nkv,
            hd,
            inter,
            k8,
            v8,
            ks,
            vs,
            rot_half,
            rope_scale
        );
    }

    /// Device addresses of the per-sequence query starts, context lengths and block tables.
    pub(super) fn seq_meta_ptrs(&self) -> [u64; 3] {
        let o = self.meta_layout.offsets();
        [o.q_start, o.ctx_len, o.block_tables].map(|f| self.meta_ptr(f))
    }

    /// Block-table stride, block size, query heads, kv heads and head size, as kernel ints.
    pub(super) fn attn_geometry(&self, cache: &CudaKvCache, num_heads: usize) -> [i32; 5] {
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
