// kr-cuda decode attention kernels (appended after attention.cu by the loader): one query per
// sequence, with RoPE and the new token's KV write fused into the kernel's prologue.

// ---- Decode prologue: RoPE and the KV write of the new token, fused into attention ----
// With `k_new` non-null the decode kernels take the step's raw (unrotated) q, k and v: each
// block rotates the query heads it reads, and the block that reads the sequence's last key
// (the new token's) first rotates that key and writes it and its value into the cache slot,
// exactly as rope_write_kv would have (the same rope_first / rope_second and rounding). With
// `k_new` null, q is already rotated and the cache already written. Nothing else reads the
// new slot during the step.
struct DecodeRope {
  const void* k_new;
  const void* v_new;
  const u32* positions;
  const u32* slots;
  const float* inv_freq;
  int interleaved;
};

// cos and sin of the token's angles into cs / sn (half = head_dim / 2 values each).
__device__ __forceinline__ void rope_angles(float* cs, float* sn, const DecodeRope& r, int tok,
                                            int half) {
  if (!r.k_new) return;
  const float pos = (float)r.positions[tok];
  for (int i = threadIdx.x; i < half; i += blockDim.x) sincosf(pos * r.inv_freq[i], &sn[i], &cs[i]);
}

// Element d of `head` after RoPE, rounded to T as rope_write_kv stores it.
template <typename T>
__device__ __forceinline__ float roped(const T* head, int d, int half, int interleaved,
                                       const float* cs, const float* sn) {
  const int i = interleaved ? d >> 1 : (d < half ? d : d - half);
  int a, b;
  rope_pair(i, half, interleaved, &a, &b);
  const float x0 = to_f(head[a]), x1 = to_f(head[b]);
  return to_f(from_f<T>(d == a ? rope_first(x0, x1, cs[i], sn[i]) : rope_second(x0, x1, cs[i], sn[i])));
}

// Query element (g, d) of this block's kv head, rotated when the kernel does RoPE, times scale.
template <typename T>
__device__ __forceinline__ float decode_q(const T* q, const DecodeRope& r, int tok, int q_width,
                                          int head, int d, int head_dim, const float* cs,
                                          const float* sn, float scale) {
  const T* qh = q + (u64)tok * q_width + head * head_dim;
  return (r.k_new ? roped(qh, d, head_dim / 2, r.interleaved, cs, sn) : to_f(qh[d])) * scale;
}

// The new token's rotated key and its value into the cache (the block reading that key calls
// this after PDL_WAIT; the split kernels, which loaded their first tile before the wait,
// reload that key after a barrier).
template <typename T>
__device__ void decode_write_new_kv(const T* k_cache, const T* v_cache, const DecodeRope& r,
                                    int tok, int kvh, int kv_width, int head_dim, const float* cs,
                                    const float* sn) {
  const u32 slot = r.slots[tok];
  if (!r.k_new || slot == NO_SLOT) return;
  const T* kh = (const T*)r.k_new + (u64)tok * kv_width + kvh * head_dim;
  const T* vh = (const T*)r.v_new + (u64)tok * kv_width + kvh * head_dim;
  T* kc = (T*)k_cache + (u64)slot * kv_width + kvh * head_dim;
  T* vc = (T*)v_cache + (u64)slot * kv_width + kvh * head_dim;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    kc[d] = from_f<T>(roped(kh, d, head_dim / 2, r.interleaved, cs, sn));
    vc[d] = vh[d];
  }
}

// Decode attention: every sequence has one query token. One block (8 warps) per (sequence, kv
// head) computes the `group` query heads sharing that kv head; the warps split the keys (warp
// w takes keys w*32 + lane, then +256, ...), each keeping an online softmax per head, and the
// eight partial results are merged through shared memory at the end. A sequence with
// ctx_len 0 is padding and writes zeros.
#define DEC_WARPS 8
#define DEC_MAX_GROUP 8
template <typename T>
__device__ void attention_decode_impl(T* out, const T* q, const T* k_cache, const T* v_cache,
                                      const u32* q_start, const u32* ctx_len,
                                      const u32* block_tables, int bt_stride, int block_size,
                                      int num_heads, int num_kv_heads, int head_dim, float scale,
                                      const DecodeRope& rope, int window, float softcap) {
  __shared__ float sq[DEC_MAX_GROUP][128];
  __shared__ float part_m[DEC_WARPS][DEC_MAX_GROUP], part_l[DEC_WARPS][DEC_MAX_GROUP];
  __shared__ float part_acc[DEC_WARPS][DEC_MAX_GROUP][128];
  __shared__ float cs[64], sn[64];
  const int group = num_heads / num_kv_heads;
  const int seq = blockIdx.x, kvh = blockIdx.y;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int ctx = ctx_len[seq], tok = q_start[seq];
  const int kv_width = num_kv_heads * head_dim, q_width = num_heads * head_dim;
  rope_angles(cs, sn, rope, tok, head_dim / 2);
  PDL_ENTRY();
  __syncthreads();  // the angles
  if (ctx > 0) decode_write_new_kv(k_cache, v_cache, rope, tok, kvh, kv_width, head_dim, cs, sn);
  for (int e = threadIdx.x; e < group * head_dim; e += blockDim.x) {
    const int g = e / head_dim, d = e % head_dim;
    sq[g][d] = decode_q(q, rope, tok, q_width, kvh * group + g, d, head_dim, cs, sn, scale);
  }
  __syncthreads();  // sq, and the new key for every warp
  float m[DEC_MAX_GROUP], l[DEC_MAX_GROUP], acc[DEC_MAX_GROUP][ATT_DPL];
  softmax_init<DEC_MAX_GROUP, ATT_DPL>(m, l, acc);
  const u32* bt = block_tables + (u64)seq * bt_stride;
  const int first = window > 0 ? max(0, ctx - window) : 0;  // keys before it lie outside
  for (int k0 = first + warp * 32; k0 < ctx; k0 += DEC_WARPS * 32) {
    const int kp = k0 + lane;
    u64 off = 0;
    float s[DEC_MAX_GROUP];
#pragma unroll
    for (int g = 0; g < DEC_MAX_GROUP; g++) s[g] = -INFINITY;
    if (kp < ctx) {
      off = kv_slot(bt, kp, block_size) * kv_width + kvh * head_dim;
#pragma unroll
      for (int g = 0; g < DEC_MAX_GROUP; g++) if (g < group) s[g] = 0.f;
      // Few blocks go through attention_decode_split; here occupancy matters more than
      // latency, so the key row is read one 16-byte load at a time.
      const int VEC = 16 / sizeof(T);
      for (int d0 = 0; d0 < head_dim; d0 += VEC) {
        float kf[8];
        unpack16(*(const uint4*)(k_cache + off + d0), kf, T());
#pragma unroll
        for (int g = 0; g < DEC_MAX_GROUP; g++) {
          if (g < group) {
#pragma unroll
            for (int e = 0; e < VEC; e++) s[g] += sq[g][d0 + e] * kf[e];
          }
        }
      }
#pragma unroll
      for (int g = 0; g < DEC_MAX_GROUP; g++) s[g] = soft_cap(s[g], softcap, 1.f);
    }
    const int nk = min(32, ctx - k0);
#pragma unroll
    for (int g = 0; g < DEC_MAX_GROUP; g++) {
      if (g < group) {
        const float m_new = fmaxf(m[g], warp_max(s[g]));
        const float p = (kp < ctx) ? expf(s[g] - m_new) : 0.f;  // lanes past ctx: 0
        const float corr = (m[g] == -INFINITY) ? 0.f : expf(m[g] - m_new);
        l[g] = l[g] * corr + warp_sum(p);
#pragma unroll
        for (int dd = 0; dd < ATT_DPL; dd++) acc[g][dd] *= corr;
        m[g] = m_new;
        s[g] = p;
      }
    }
    // Values of 8 keys are loaded before any is used, so their latencies overlap (16 measured
    // slower at large batches: registers). Lanes past the last key have p = 0 and offset 0
    // (a valid slot), so they need no guard.
    for (int j0 = 0; j0 < nk; j0 += 8) {
      float vv[8][ATT_DPL];
#pragma unroll
      for (int jj = 0; jj < 8; jj++) {
        const u64 voff = __shfl_sync(FULL_MASK, off, (j0 + jj) & 31);
#pragma unroll
        for (int dd = 0; dd < ATT_DPL; dd++) {
          const int d = lane + 32 * dd;
          vv[jj][dd] = d < head_dim ? to_f(v_cache[voff + d]) : 0.f;
        }
      }
#pragma unroll
      for (int jj = 0; jj < 8; jj++) {
#pragma unroll
        for (int g = 0; g < DEC_MAX_GROUP; g++) {
          if (g < group) {
            const float pj = __shfl_sync(FULL_MASK, s[g], (j0 + jj) & 31);
#pragma unroll
            for (int dd = 0; dd < ATT_DPL; dd++) acc[g][dd] += pj * vv[jj][dd];
          }
        }
      }
    }
  }
#pragma unroll
  for (int g = 0; g < DEC_MAX_GROUP; g++) {
    if (g < group) {
      if (lane == 0) { part_m[warp][g] = m[g]; part_l[warp][g] = l[g]; }
#pragma unroll
      for (int dd = 0; dd < ATT_DPL; dd++) {
        const int d = lane + 32 * dd;
        if (d < head_dim) part_acc[warp][g][d] = acc[g][dd];
      }
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < group * head_dim; e += blockDim.x) {
    const int g = e / head_dim, d = e % head_dim;
    float mx = -INFINITY;
    for (int w = 0; w < DEC_WARPS; w++) mx = fmaxf(mx, part_m[w][g]);
    float num = 0.f, den = 0.f;
    if (mx != -INFINITY) {
      for (int w = 0; w < DEC_WARPS; w++) {
        if (part_m[w][g] != -INFINITY) {
          const float f = expf(part_m[w][g] - mx);
          num += f * part_acc[w][g][d];
          den += f * part_l[w][g];
        }
      }
    }
    out[(u64)tok * q_width + (kvh * group + g) * head_dim + d] = from_f<T>(den > 0.f ? num / den : 0.f);
  }
}

// ---- Split-K decode attention, for steps with few sequences ----
// With one block per (sequence, kv head) a batch-1 step runs on 8 of 132 SMs and each block
// walks its keys in a chain of memory round trips. Here the keys of each (sequence, kv head)
// are cut into `splits` chunks, one block each, walked in tiles of DS_KT keys in three
// phases with no serial chain per key (a warp-per-key online softmax measured 22 us on
// Llama-3.1-8B shapes, nearly all of it one warp per scheduler waiting on its own shuffles):
//   scores: the 8 warps take 4 keys each, lanes splitting the head dimension;
//   softmax: warp g updates query head g's running max and sum over the tile (lane = key);
//   values: thread (g, d) adds the tile's p-weighted values of column d.
// A tile's keys and values are in registers before its scores start: the first tile is
// loaded before PDL_WAIT (the block tables are uploaded before the step and the cache holds
// only earlier tokens there), so the block-table and cache round trips overlap the previous
// kernel; the new token's key, which this kernel writes after the wait, is then reloaded by
// the threads holding it. A later tile's keys are loaded while the one before is in its
// softmax and value phases, its values after the value phase (holding two tiles of values
// spilled registers). Scores are kept in log2 units (q is pre-scaled by log2(e)) so each
// exponential is one exp2f. The splits are merged in one of two ways:
//   attention_decode_split: each block writes its partial softmax state (per query head:
//   max, sum, weighted values) to `partial`; the last block of a (sequence, kv head) to
//   finish, counted in `counters` (zero between steps: the merging block resets its
//   counter), merges them into `out`;
//   attention_decode_cluster (sm_90+): the splits of a (sequence, kv head) are one
//   thread-block cluster; each keeps its state in shared memory and, after a cluster
//   barrier, merges a slice of the outputs reading the others' through distributed shared
//   memory (no global round trips, fence or atomic).
// A sequence with ctx_len 0 is padding and writes zeros.
#define DS_THREADS 256
#define DS_WARPS (DS_THREADS / 32)
#define DS_KT 32  // keys per tile: one per lane in the softmax phase
#define DS_KEYS_PER_WARP (DS_KT / DS_WARPS)
#define DS_MAX_DPL 4  // head_dim up to 128
#define DS_MAX_SLOTS 4  // query heads per thread in the value phase (head_dim >= 64 or group <= 4)
#define DS_MAX_SPLITS 64  // the long-context steps' most; others use at most 16
#define DS_MAX_CLUSTER 8  // the portable cluster size
#define LOG2E 1.4426950408889634f

// The kernel parameters every decode kernel shares.
template <typename T>
struct DecodeArgs {
  T* out;
  const T* q;
  const T* k_cache;
  const T* v_cache;
  const u32* q_start;
  const u32* ctx_len;
  const u32* block_tables;
  int bt_stride, block_size, num_heads, num_kv_heads, head_dim;
  float scale;
  int min_keys;  // > 0: the splits of a sequence cover it in chunks of at least this many keys
  int window;    // > 0: a sliding-window layer, whose query sees its last `window` keys
  float softcap; // > 0: attention logits soft-capped at this value (Gemma 2)
};

// A split block's keys [begin, end) of a sequence with ctx keys, and how many splits of its
// (sequence, kv head) have keys. With min_keys 0 every one of the gridDim.z splits takes
// ceil(ctx / splits) keys, even none, and all of them merge; otherwise the chunks are at least
// min_keys long (whole tiles of 32) and the splits past the last chunk exit without merging.
struct DecodeChunk {
  int begin, end, splits;
};

// With window > 0 the keys are the last `window` of the ctx.
__device__ __forceinline__ DecodeChunk decode_chunk(int ctx, int min_keys, int window) {
  const int first = window > 0 ? max(0, ctx - window) : 0, keys = ctx - first;
  int chunk = (keys + gridDim.z - 1) / gridDim.z;
  int splits = gridDim.z;
  if (min_keys > 0) {
    chunk = max((chunk + 31) / 32 * 32, min_keys);
    splits = max(1, (keys + chunk - 1) / chunk);
  }
  const int begin = first + blockIdx.z * chunk;
  return {begin, min(ctx, begin + chunk), splits};
}

// Shared memory of a split block. After the last tile, sq holds the block's weighted values
// (query head g, column d) for the merge.
struct DecodeSplitShared {
  float sq[DEC_MAX_GROUP][128];
  float sp[DEC_MAX_GROUP][DS_KT];
  float s_m[DEC_MAX_GROUP], s_l[DEC_MAX_GROUP], s_corr[DEC_MAX_GROUP];
  u64 row[2][DS_KT];
  float cs[64], sn[64];
};

// One thread's registers of a tile: keys warp + DS_WARPS * u at dims lane + 32 e (scores
// phase) and column d of every key's value (values phase).
struct DecodeTile {
  float k[DS_KEYS_PER_WARP][DS_MAX_DPL];
  float v[DS_KT];
};

// Cache rows (element offsets, this kv head) of keys t0 .. t0 + nk into row, by threads < nk.
__device__ __forceinline__ void decode_tile_rows(u64* row, const u32* bt, int t0, int nk,
                                                 int block_size, u64 kv_width, int head_off) {
  if ((int)threadIdx.x < nk) row[threadIdx.x] = kv_slot(bt, t0 + threadIdx.x, block_size) * kv_width + head_off;
}

// This thread's keys of the tile whose rows are in `row` (keys at or past nk read 0); with
// only >= 0, just key `only`.
template <typename T>
__device__ __forceinline__ void decode_tile_load_k(DecodeTile& t, const T* k_cache, const u64* row,
                                                   int nk, int head_dim, int only) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
  for (int u = 0; u < DS_KEYS_PER_WARP; u++) {
    const int kk = warp + DS_WARPS * u;
    if (only >= 0 && kk != only) continue;
#pragma unroll
    for (int e = 0; e < DS_MAX_DPL; e++) {
      const int d = lane + 32 * e;
      t.k[u][e] = (kk < nk && d < head_dim) ? to_f(k_cache[row[kk] + d]) : 0.f;
    }
  }
}

// Column d of the tile's values into v (threads with pv; keys at or past nk read 0); with
// only >= 0, just key `only`.
template <typename T>
__device__ __forceinline__ void decode_tile_load_v(float (&v)[DS_KT], const T* v_cache, const u64* row,
                                                   int nk, bool pv, int d, int only) {
#pragma unroll
  for (int k = 0; k < DS_KT; k++)
    if (only < 0 || k == only) v[k] = (pv && k < nk) ? to_f(v_cache[row[k] + d]) : 0.f;
}

// The scores of the tile's keys for every query head of the group into sp (log2 units).
__device__ __forceinline__ void decode_tile_scores(float (*sp)[DS_KT], const float (*sq)[128],
                                                   const DecodeTile& t, int nk, int group,
                                                   int head_dim) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
  for (int u = 0; u < DS_KEYS_PER_WARP; u++) {
    const int kk = warp + DS_WARPS * u;
#pragma unroll
    for (int g = 0; g < DEC_MAX_GROUP; g++) {
      if (g < group) {
        float s = 0.f;
#pragma unroll
        for (int e = 0; e < DS_MAX_DPL; e++) {
          const int d = lane + 32 * e;
          if (d < head_dim) s += sq[g][d] * t.k[u][e];
        }
        s = warp_sum(s);
        if (lane == 0 && kk < nk) sp[g][kk] = s;
      }
    }
  }
}

// Softmax phase of a tile: warp g folds query head g's scores in sp into its running max and
// sum, leaving the probabilities in sp and the rescale of the old state in s_corr.
__device__ __forceinline__ void decode_tile_softmax(DecodeSplitShared& sh, int nk, int group, float softcap) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (warp >= group) return;
  const int g = warp;
  const float s = lane < nk ? soft_cap(sh.sp[g][lane], softcap, LOG2E) : -INFINITY;
  const float m_old = sh.s_m[g], m_new = fmaxf(m_old, warp_max(s));
  const float p = lane < nk ? exp2f(s - m_new) : 0.f;
  const float corr = exp2f(m_old - m_new);  // m_old = -inf on the first tile: 0
  const float psum = warp_sum(p);
  sh.sp[g][lane] = p;
  if (lane == 0) { sh.s_corr[g] = corr; sh.s_m[g] = m_new; sh.s_l[g] = sh.s_l[g] * corr + psum; }
}

// Where a split block works: sequence, kv head, its keys [k_begin, k_end), and its thread's
// value-phase place (column d of query heads g0, g0 + gstep, ...; threads with pv).
struct DecodeSplitPlace {
  int seq, kvh, ctx, tok, k_begin, k_end, group, d, g0, gstep;
  bool pv;
};

template <typename T>
__device__ __forceinline__ DecodeSplitPlace decode_split_place(const DecodeArgs<T>& a) {
  DecodeSplitPlace p;
  p.seq = blockIdx.x;
  p.kvh = blockIdx.y;
  p.ctx = a.ctx_len[p.seq];
  p.tok = a.q_start[p.seq];
  const DecodeChunk c = decode_chunk(p.ctx, 0, a.window);  // the generic kernel: every split merges
  p.k_begin = c.begin;
  p.k_end = c.end;
  p.group = a.num_heads / a.num_kv_heads;
  p.gstep = DS_THREADS / a.head_dim;
  p.d = threadIdx.x % a.head_dim;
  p.g0 = threadIdx.x / a.head_dim;
  p.pv = (int)threadIdx.x < p.gstep * a.head_dim;
  return p;
}

// The partial softmax state of this block's keys: running max s_m and sum s_l per query
// head (shared) and this thread's weighted values acc. Runs PDL_ENTRY itself, after the
// first tile's loads.
template <typename T>
__device__ void decode_split_partial(DecodeSplitShared& sh, float (&acc)[DS_MAX_SLOTS],
                                     const DecodeArgs<T>& a, const DecodeRope& rope,
                                     const DecodeSplitPlace& p) {
  const int hd = a.head_dim, tid = threadIdx.x;
  const u64 kv_width = (u64)a.num_kv_heads * hd;
  const u32* bt = a.block_tables + (u64)p.seq * a.bt_stride;
  rope_angles(sh.cs, sh.sn, rope, p.tok, hd / 2);
  DecodeTile tile;
  decode_tile_rows(sh.row[0], bt, p.k_begin, min(DS_KT, p.k_end - p.k_begin), a.block_size, kv_width, p.kvh * hd);
  __syncthreads();  // the first rows and the angles
  decode_tile_load_k(tile, a.k_cache, sh.row[0], p.k_end - p.k_begin, hd, -1);
  decode_tile_load_v(tile.v, a.v_cache, sh.row[0], p.k_end - p.k_begin, p.pv, p.d, -1);
  PDL_ENTRY();
  const int new_key = p.ctx - 1 - p.k_begin;  // in this block's keys when < k_end - k_begin
  const bool reads_new_key = p.ctx > 0 && new_key >= 0 && p.k_begin + new_key < p.k_end;
  if (reads_new_key)
    decode_write_new_kv(a.k_cache, a.v_cache, rope, p.tok, p.kvh, (int)kv_width, hd, sh.cs, sh.sn);
  for (int e = tid; e < p.group * hd; e += DS_THREADS) {
    const int g = e / hd, d = e % hd;
    sh.sq[g][d] = decode_q(a.q, rope, p.tok, a.num_heads * hd, p.kvh * p.group + g, d, hd, sh.cs, sh.sn, a.scale) * LOG2E;
  }
  if (tid < DEC_MAX_GROUP) { sh.s_m[tid] = -INFINITY; sh.s_l[tid] = 0.f; }
#pragma unroll
  for (int j = 0; j < DS_MAX_SLOTS; j++) acc[j] = 0.f;
  __syncthreads();  // sq, the running state and the new key's cache slot
  if (reads_new_key && new_key < DS_KT) {  // loaded above before this block wrote it
    decode_tile_load_k(tile, a.k_cache, sh.row[0], p.k_end - p.k_begin, hd, new_key);
    decode_tile_load_v(tile.v, a.v_cache, sh.row[0], p.k_end - p.k_begin, p.pv, p.d, new_key);
  }
  int b = 0;
  for (int t0 = p.k_begin; t0 < p.k_end; t0 += DS_KT, b ^= 1) {
    const int nk = min(DS_KT, p.k_end - t0), nk_next = min(DS_KT, p.k_end - t0 - DS_KT);
    decode_tile_rows(sh.row[b ^ 1], bt, t0 + DS_KT, nk_next, a.block_size, kv_width, p.kvh * hd);
    decode_tile_scores(sh.sp, sh.sq, tile, nk, p.group, hd);
    __syncthreads();  // the scores and the next rows
    if (nk_next > 0) decode_tile_load_k(tile, a.k_cache, sh.row[b ^ 1], nk_next, hd, -1);
    decode_tile_softmax(sh, nk, p.group, a.softcap);
    __syncthreads();
    if (p.pv) {
#pragma unroll
      for (int j = 0; j < DS_MAX_SLOTS; j++) {
        const int g = p.g0 + j * p.gstep;
        if (g < p.group) {
          float s = acc[j] * sh.s_corr[g];
#pragma unroll
          for (int k = 0; k < DS_KT; k++) s += sh.sp[g][k] * tile.v[k];
          acc[j] = s;
        }
      }
    }
    if (nk_next > 0) decode_tile_load_v(tile.v, a.v_cache, sh.row[b ^ 1], nk_next, p.pv, p.d, -1);
    __syncthreads();  // sp and this tile's rows are rewritten next
  }
}

// Where a split block's partial softmax state is (shared memory): weighted values acc[g][d],
// running max m[g] (log2 units) and sum l[g] per query head g. Complete (behind a
// __syncthreads) when a merge starts.
struct DecodeState {
  const float (*acc)[128];
  const float* m;
  const float* l;
};

// Global merge (attention_decode_split): see the section comment. `splits` of the grid's
// gridDim.z splits of this (sequence, kv head) merge (the rest have no keys and exited); the
// partial states are laid out for all gridDim.z.
template <typename T>
__device__ void decode_merge_global(const DecodeState st, const DecodeArgs<T>& a, int seq, int kvh,
                                    int tok, int group, float* partial, u32* counters, int splits) {
  __shared__ bool is_last;
  __shared__ float scale_of[DEC_MAX_GROUP][DS_MAX_SPLITS], sum_of[DEC_MAX_GROUP][DS_MAX_SPLITS];
  __shared__ float den_of[DEC_MAX_GROUP];
  const int hd = a.head_dim;
  const int stride = hd + 2;  // per head: values, then max, then sum
  const u64 pair = (u64)seq * a.num_kv_heads + kvh;
  float* mine = partial + (pair * gridDim.z + blockIdx.z) * group * stride;
  for (int e = threadIdx.x; e < group * hd; e += blockDim.x) mine[(e / hd) * stride + e % hd] = st.acc[e / hd][e % hd];
  if ((int)threadIdx.x < group) {
    mine[threadIdx.x * stride + hd] = st.m[threadIdx.x];
    mine[threadIdx.x * stride + hd + 1] = st.l[threadIdx.x];
  }
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    is_last = atomicAdd(counters + pair, 1u) == (u32)(splits - 1);
    if (is_last) counters[pair] = 0u;  // ready for the next step
  }
  __syncthreads();
  if (!is_last) return;
  __threadfence();
  // The scale of each (head, split) once, then every output sums its splits with all loads
  // independent (a serial walk of the splits per output was most of the kernel's time).
  const float* all = partial + pair * gridDim.z * group * stride;
  for (int e = threadIdx.x; e < group * splits; e += blockDim.x) {
    const int g = e / splits, s = e % splits;
    scale_of[g][s] = all[(s * group + g) * stride + hd];
    sum_of[g][s] = all[(s * group + g) * stride + hd + 1];
  }
  __syncthreads();
  if ((int)threadIdx.x < group) {
    const int g = threadIdx.x;
    float mx = -INFINITY, den = 0.f;
    for (int s = 0; s < splits; s++) mx = fmaxf(mx, scale_of[g][s]);
    for (int s = 0; s < splits; s++) {
      const float f = mx == -INFINITY ? 0.f : exp2f(scale_of[g][s] - mx);  // -inf: no keys
      scale_of[g][s] = f;
      den += f * sum_of[g][s];
    }
    den_of[g] = den;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < group * hd; e += blockDim.x) {
    const int g = e / hd, d = e % hd;
    // Four independent sums, so the loads of a long merge overlap.
    float num[4] = {0.f, 0.f, 0.f, 0.f};
    int s = 0;
    for (; s + 4 <= splits; s += 4) {
#pragma unroll
      for (int j = 0; j < 4; j++) num[j] += scale_of[g][s + j] * all[((s + j) * group + g) * stride + d];
    }
    for (; s < splits; s++) num[0] += scale_of[g][s] * all[(s * group + g) * stride + d];
    const float total = (num[0] + num[1]) + (num[2] + num[3]);
    const float den = den_of[g];
    a.out[(u64)tok * a.num_heads * hd + (kvh * group + g) * hd + d] = from_f<T>(den > 0.f ? total / den : 0.f);
  }
}


#if __CUDA_ARCH__ >= 900
// Every thread of every block of the cluster arrives; shared-memory writes before it are
// visible cluster-wide after it.
__device__ __forceinline__ void cluster_barrier() {
  asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}

// The float at `p` in the shared memory of the cluster's block `rank`.
__device__ __forceinline__ float ld_cluster_shared(const float* p, u32 rank) {
  u32 remote;
  asm("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(shared_addr(p)), "r"(rank));
  float v;
  asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(remote) : "memory");
  return v;
}
#endif

// Cluster merge (attention_decode_cluster): the cluster is (1, 1, splits), so a block's rank
// is its split. Output e of the group's group * head_dim goes to block e % splits.
template <typename T>
__device__ void decode_merge_cluster(const DecodeState st, const DecodeArgs<T>& a, int kvh, int tok,
                                     int group) {
#if __CUDA_ARCH__ >= 900
  const int hd = a.head_dim, splits = gridDim.z;
  cluster_barrier();
  for (int e = threadIdx.x * splits + blockIdx.z; e < group * hd; e += blockDim.x * splits) {
    const int g = e / hd, d = e % hd;
    float m[DS_MAX_CLUSTER], l[DS_MAX_CLUSTER], v[DS_MAX_CLUSTER], mx = -INFINITY;
#pragma unroll
    for (int r = 0; r < DS_MAX_CLUSTER; r++) {
      if (r < splits) {
        m[r] = ld_cluster_shared(&st.m[g], r);
        l[r] = ld_cluster_shared(&st.l[g], r);
        v[r] = ld_cluster_shared(&st.acc[g][d], r);
        mx = fmaxf(mx, m[r]);
      }
    }
    float num = 0.f, den = 0.f;
#pragma unroll
    for (int r = 0; r < DS_MAX_CLUSTER; r++) {
      if (r < splits && m[r] != -INFINITY) {  // -inf: a split with no keys
        const float f = exp2f(m[r] - mx);
        num += f * v[r];
        den += f * l[r];
      }
    }
    a.out[(u64)tok * a.num_heads * hd + (kvh * group + g) * hd + d] = from_f<T>(den > 0.f ? num / den : 0.f);
  }
  cluster_barrier();  // every block's shared memory stays until the others have read it
#else
  __trap();  // launched only on sm_90 and newer
#endif
}

template <typename T>
__device__ void attention_decode_split_impl(const DecodeArgs<T>& a, const DecodeRope& rope,
                                            float* partial, u32* counters, bool cluster) {
  __shared__ DecodeSplitShared sh;
  const DecodeSplitPlace p = decode_split_place(a);
  float acc[DS_MAX_SLOTS];
  decode_split_partial(sh, acc, a, rope, p);
  if (p.pv) {  // sq is free: the last tile's scores are behind the loop's final barrier
#pragma unroll
    for (int j = 0; j < DS_MAX_SLOTS; j++) {
      const int g = p.g0 + j * p.gstep;
      if (g < p.group) sh.sq[g][p.d] = acc[j];
    }
  }
  __syncthreads();
  const DecodeState st = {sh.sq, sh.s_m, sh.s_l};
  if (cluster) decode_merge_cluster(st, a, p.kvh, p.tok, p.group);
  else decode_merge_global(st, a, p.seq, p.kvh, p.tok, p.group, partial, counters, gridDim.z);
}

// The parameters of every decode attention kernel, and the DecodeArgs `a` and DecodeRope
// `rope` made of them (the non-split kernel takes only the rope and ignores partial and
// counters).
#define DECODE_PARAMS(T)                                                                           \
  T *out, const T *q, const T *k_cache, const T *v_cache, const u32 *q_start,                      \
      const u32 *ctx_len, const u32 *block_tables, int bt_stride, int block_size, int num_heads,   \
      int num_kv_heads, int head_dim, float scale, float *partial, u32 *counters,                  \
      const T *k_new, const T *v_new, const u32 *positions, const u32 *slots,                      \
      const float *inv_freq, int interleaved, int min_keys, int window, float softcap
#define DECODE_UNPACK(T)                                                                           \
  const DecodeArgs<T> a = {out,       q,         k_cache,      v_cache, q_start,  ctx_len,         \
                           block_tables, bt_stride, block_size, num_heads, num_kv_heads, head_dim, \
                           scale,     min_keys,  window,       softcap};                           \
  const DecodeRope rope = {k_new, v_new, positions, slots, inv_freq, interleaved}

#define DECODE_ATTENTION_KERNELS(T, S)                                                             \
  extern "C" __global__ void __launch_bounds__(DS_THREADS)                                         \
      attention_decode_split_##S(DECODE_PARAMS(T)) {                                               \
    DECODE_UNPACK(T);                                                                              \
    attention_decode_split_impl<T>(a, rope, partial, counters, false);                             \
  }                                                                                                \
  extern "C" __global__ void __launch_bounds__(DS_THREADS)                                         \
      attention_decode_cluster_##S(DECODE_PARAMS(T)) {                                             \
    DECODE_UNPACK(T);                                                                              \
    attention_decode_split_impl<T>(a, rope, partial, counters, true);                              \
  }                                                                                                \
  extern "C" __global__ void attention_decode_##S(DECODE_PARAMS(T)) {                              \
    const DecodeRope rope = {k_new, v_new, positions, slots, inv_freq, interleaved};               \
    attention_decode_impl<T>(out, q, k_cache, v_cache, q_start, ctx_len, block_tables, bt_stride,  \
                             block_size, num_heads, num_kv_heads, head_dim, scale, rope, window,   \
                             softcap);                                                             \
  }

DECODE_ATTENTION_KERNELS(float, f32)
DECODE_ATTENTION_KERNELS(bf16_t, bf16)
