// kr-cuda attention kernels (appended to kernels.cu by the loader, so its types and helpers
// apply): paged attention on CUDA cores for any batch, decode attention, and tensor-core (mma)
// attention for bf16 prefill chunks.

// Paged causal attention for a packed batch. One block (8 warps) per (work item, kv head); a
// work item is a tile of up to `tile_q` query tokens of one sequence, and the block computes
// the rows of all `group` query heads that share the kv head (rows = tokens x group <= 64).
// Keys and values stream through shared memory in chunks of 32; softmax is online (f32).
// work[2i] = sequence, work[2i+1] = first query of the tile; a sequence with q_len 0 (or a
// tile past its end) is padding and returns at once.
#define ATT_KC 32
#define ATT_WARPS 8
#define ATT_RPW 8
#define ATT_DPL 4
// Cache slot of key position `kp` of a sequence whose block table is `bt`.
__device__ __forceinline__ u64 kv_slot(const u32* bt, int kp, int block_size) {
  return (u64)bt[kp / block_size] * block_size + kp % block_size;
}

// A fresh online-softmax state: running max -inf, sum 0, accumulators 0, for R rows.
template <int R, int DPL>
__device__ __forceinline__ void softmax_init(float* m, float* l, float (*acc)[DPL]) {
#pragma unroll
  for (int r = 0; r < R; r++) {
    m[r] = -INFINITY;
    l[r] = 0.f;
#pragma unroll
    for (int dd = 0; dd < DPL; dd++) acc[r][dd] = 0.f;
  }
}

template <typename T>
__device__ void attention_impl(T* out, const T* q, const T* k_cache, const T* v_cache, const u32* work,
                               const u32* q_start, const u32* q_len, const u32* ctx_len,
                               const u32* block_tables, int bt_stride, int block_size, int num_heads,
                               int num_kv_heads, int head_dim, int tile_q, float scale) {
  extern __shared__ float smem[];
  const int group = num_heads / num_kv_heads;
  const int seq = work[2 * blockIdx.x], q0 = work[2 * blockIdx.x + 1], kvh = blockIdx.y;
  const int qlen = q_len[seq], ctx = ctx_len[seq], qs = q_start[seq];
  const int nq = min(tile_q, qlen - q0);
  if (nq <= 0) return;
  const int rows = nq * group;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int kv_width = num_kv_heads * head_dim, q_width = num_heads * head_dim;
  float* sq = smem;                                   // [rows][head_dim]
  float* sk = sq + ATT_WARPS * ATT_RPW * head_dim;    // [ATT_KC][head_dim + 1]
  float* sv = sk + ATT_KC * (head_dim + 1);           // [ATT_KC][head_dim]
  for (int e = threadIdx.x; e < rows * head_dim; e += blockDim.x) {
    const int r = e / head_dim, d = e % head_dim;
    const int tok = qs + q0 + r / group, h = kvh * group + r % group;
    sq[e] = to_f(q[(u64)tok * q_width + h * head_dim + d]);
  }
  const int first_pos = ctx - qlen + q0;  // position of the tile's first query
  const int kend = first_pos + nq;        // keys [0, kend) are visible to some row
  float m[ATT_RPW], l[ATT_RPW], acc[ATT_RPW][ATT_DPL];
  softmax_init<ATT_RPW, ATT_DPL>(m, l, acc);
  const u32* bt = block_tables + (u64)seq * bt_stride;
  for (int k0 = 0; k0 < kend; k0 += ATT_KC) {
    __syncthreads();
    for (int e = threadIdx.x; e < ATT_KC * head_dim; e += blockDim.x) {
      const int j = e / head_dim, d = e % head_dim, kp = k0 + j;
      float kv = 0.f, vv = 0.f;
      if (kp < kend) {
        const u64 slot = kv_slot(bt, kp, block_size);
        const u64 off = slot * kv_width + kvh * head_dim + d;
        kv = to_f(k_cache[off]);
        vv = to_f(v_cache[off]);
      }
      sk[j * (head_dim + 1) + d] = kv;
      sv[j * head_dim + d] = vv;
    }
    __syncthreads();
#pragma unroll
    for (int rr = 0; rr < ATT_RPW; rr++) {
      const int r = warp + rr * ATT_WARPS;
      if (r < rows) {
        const int qpos = first_pos + r / group, kp = k0 + lane;
        float s = -INFINITY;
        if (kp <= qpos) {
          float dot = 0.f;
          for (int d = 0; d < head_dim; d++) dot += sq[r * head_dim + d] * sk[lane * (head_dim + 1) + d];
          s = dot * scale;
        }
        const float m_new = fmaxf(m[rr], warp_max(s));
        if (m_new != -INFINITY) {
          const float p = (s == -INFINITY) ? 0.f : expf(s - m_new);
          const float corr = (m[rr] == -INFINITY) ? 0.f : expf(m[rr] - m_new);
          l[rr] = l[rr] * corr + warp_sum(p);
#pragma unroll
          for (int dd = 0; dd < ATT_DPL; dd++) acc[rr][dd] *= corr;
          for (int j = 0; j < ATT_KC; j++) {
            const float pj = __shfl_sync(FULL_MASK, p, j);
#pragma unroll
            for (int dd = 0; dd < ATT_DPL; dd++) {
              const int d = lane + 32 * dd;
              if (d < head_dim) acc[rr][dd] += pj * sv[j * head_dim + d];
            }
          }
          m[rr] = m_new;
        }
      }
    }
  }
#pragma unroll
  for (int rr = 0; rr < ATT_RPW; rr++) {
    const int r = warp + rr * ATT_WARPS;
    if (r < rows) {
      const int tok = qs + q0 + r / group, h = kvh * group + r % group;
      const float inv = l[rr] > 0.f ? 1.f / l[rr] : 0.f;
#pragma unroll
      for (int dd = 0; dd < ATT_DPL; dd++) {
        const int d = lane + 32 * dd;
        if (d < head_dim) out[(u64)tok * q_width + h * head_dim + d] = from_f<T>(acc[rr][dd] * inv);
      }
    }
  }
}

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
// this, then synchronises before reading keys).
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
                                      const DecodeRope& rope) {
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
  for (int k0 = warp * 32; k0 < ctx; k0 += DEC_WARPS * 32) {
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
//   values: thread (g, d) adds the tile's p-weighted values of column d, loaded at the start
//   of the tile so that their latency overlaps the first two phases.
// Scores are kept in log2 units (q is pre-scaled by log2(e)) so each exponential is one
// exp2f. Each block writes its partial softmax state (per query head: max, sum, weighted
// values) to `partial`; the last block of a (sequence, kv head) to finish, counted in
// `counters` (zero between steps: the merging block resets its counter), merges them into
// `out`. A sequence with ctx_len 0 is padding and writes zeros.
#define DS_THREADS 256
#define DS_WARPS (DS_THREADS / 32)
#define DS_KT 32  // keys per tile: one per lane in the softmax phase
#define DS_KEYS_PER_WARP (DS_KT / DS_WARPS)
#define DS_MAX_DPL 4  // head_dim up to 128
#define DS_MAX_SLOTS 4  // query heads per thread in the value phase (head_dim >= 64 or group <= 4)
#define DS_MAX_SPLITS 16
#define LOG2E 1.4426950408889634f

// The scores of the tile's keys for every query head of the group into sp (log2 units).
template <typename T>
__device__ __forceinline__ void decode_tile_scores(float (*sp)[DS_KT], const float (*sq)[128],
                                                   const T* k_cache, const u64* row, int nk,
                                                   int group, int head_dim) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float kf[DS_KEYS_PER_WARP][DS_MAX_DPL];
#pragma unroll
  for (int u = 0; u < DS_KEYS_PER_WARP; u++) {
    const int kk = warp + DS_WARPS * u;
#pragma unroll
    for (int e = 0; e < DS_MAX_DPL; e++) {
      const int d = lane + 32 * e;
      kf[u][e] = (kk < nk && d < head_dim) ? to_f(k_cache[row[kk] + d]) : 0.f;
    }
  }
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
          if (d < head_dim) s += sq[g][d] * kf[u][e];
        }
        s = warp_sum(s);
        if (lane == 0 && kk < nk) sp[g][kk] = s;
      }
    }
  }
}

template <typename T>
__device__ void attention_decode_split_impl(T* out, const T* q, const T* k_cache, const T* v_cache,
                                            const u32* q_start, const u32* ctx_len,
                                            const u32* block_tables, int bt_stride, int block_size,
                                            int num_heads, int num_kv_heads, int head_dim,
                                            float scale, float* partial, u32* counters,
                                            const DecodeRope& rope) {
  __shared__ float sq[DEC_MAX_GROUP][128];
  __shared__ float sp[DEC_MAX_GROUP][DS_KT];
  __shared__ float s_m[DEC_MAX_GROUP], s_l[DEC_MAX_GROUP], s_corr[DEC_MAX_GROUP];
  __shared__ u64 row[DS_KT];
  __shared__ float cs[64], sn[64];
  __shared__ bool is_last;
  const int group = num_heads / num_kv_heads, splits = gridDim.z;
  const int seq = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int ctx = ctx_len[seq], tok = q_start[seq];
  const int kv_width = num_kv_heads * head_dim, q_width = num_heads * head_dim;
  const int chunk = (ctx + splits - 1) / splits;
  const int k_begin = split * chunk, k_end = min(ctx, k_begin + chunk);
  const u32* bt = block_tables + (u64)seq * bt_stride;
  rope_angles(cs, sn, rope, tok, head_dim / 2);
  PDL_ENTRY();
  __syncthreads();  // the angles
  const bool reads_new_key = ctx > 0 && k_begin <= ctx - 1 && ctx - 1 < k_end;
  if (reads_new_key) decode_write_new_kv(k_cache, v_cache, rope, tok, kvh, kv_width, head_dim, cs, sn);
  for (int e = tid; e < group * head_dim; e += DS_THREADS) {
    const int g = e / head_dim, d = e % head_dim;
    sq[g][d] = decode_q(q, rope, tok, q_width, kvh * group + g, d, head_dim, cs, sn, scale) * LOG2E;
  }
  if (tid < DEC_MAX_GROUP) { s_m[tid] = -INFINITY; s_l[tid] = 0.f; }
  // Value phase layout: column d, query heads g0, g0 + gstep, ...
  const int gstep = DS_THREADS / head_dim, d = tid % head_dim, g0 = tid / head_dim;
  const bool pv = tid < gstep * head_dim;
  float acc[DS_MAX_SLOTS];
#pragma unroll
  for (int j = 0; j < DS_MAX_SLOTS; j++) acc[j] = 0.f;
  for (int t0 = k_begin; t0 < k_end; t0 += DS_KT) {
    const int nk = min(DS_KT, k_end - t0);
    if (tid < nk) {
      const int kp = t0 + tid;
      row[tid] = kv_slot(bt, kp, block_size) * kv_width + kvh * head_dim;
    }
    __syncthreads();  // rows, sq, the new key, and the previous tile's readers of sp are done
    float vcol[DS_KT];
#pragma unroll
    for (int k = 0; k < DS_KT; k++) vcol[k] = (pv && k < nk) ? to_f(v_cache[row[k] + d]) : 0.f;
    decode_tile_scores<T>(sp, sq, k_cache, row, nk, group, head_dim);
    __syncthreads();
    if (warp < group) {
      const int g = warp;
      const float s = lane < nk ? sp[g][lane] : -INFINITY;
      const float m_old = s_m[g], m_new = fmaxf(m_old, warp_max(s));
      const float p = lane < nk ? exp2f(s - m_new) : 0.f;
      const float corr = exp2f(m_old - m_new);  // m_old = -inf on the first tile: 0
      const float psum = warp_sum(p);
      sp[g][lane] = p;
      if (lane == 0) { s_corr[g] = corr; s_m[g] = m_new; s_l[g] = s_l[g] * corr + psum; }
    }
    __syncthreads();
    if (pv) {
#pragma unroll
      for (int j = 0; j < DS_MAX_SLOTS; j++) {
        const int g = g0 + j * gstep;
        if (g < group) {
          float a = acc[j] * s_corr[g];
#pragma unroll
          for (int k = 0; k < DS_KT; k++) a += sp[g][k] * vcol[k];
          acc[j] = a;
        }
      }
    }
    __syncthreads();  // sp and row are rewritten by the next tile
  }
  const int stride = head_dim + 2;  // per head: values, then max, then sum
  float* mine = partial + (((u64)seq * num_kv_heads + kvh) * splits + split) * group * stride;
  if (pv) {
#pragma unroll
    for (int j = 0; j < DS_MAX_SLOTS; j++) {
      const int g = g0 + j * gstep;
      if (g < group) mine[g * stride + d] = acc[j];
    }
  }
  if (tid < group) { mine[tid * stride + head_dim] = s_m[tid]; mine[tid * stride + head_dim + 1] = s_l[tid]; }
  // The last block of this (sequence, kv head) merges every split.
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    u32* counter = counters + (u64)seq * num_kv_heads + kvh;
    is_last = atomicAdd(counter, 1u) == (u32)(splits - 1);
    if (is_last) *counter = 0u;  // ready for the next step
  }
  __syncthreads();
  if (!is_last) return;
  __threadfence();
  // Merge: the scale of each (head, split) once, then every output sums its splits with all
  // loads independent (a serial walk of the splits per output was most of the kernel's time).
  __shared__ float scale_of[DEC_MAX_GROUP][DS_MAX_SPLITS], sum_of[DEC_MAX_GROUP][DS_MAX_SPLITS];
  __shared__ float den_of[DEC_MAX_GROUP];
  const float* all = partial + ((u64)seq * num_kv_heads + kvh) * splits * group * stride;
  for (int e = threadIdx.x; e < group * splits; e += blockDim.x) {
    const int g = e / splits, sp = e % splits;
    scale_of[g][sp] = all[(sp * group + g) * stride + head_dim];
    sum_of[g][sp] = all[(sp * group + g) * stride + head_dim + 1];
  }
  __syncthreads();
  if ((int)threadIdx.x < group) {
    const int g = threadIdx.x;
    float mx = -INFINITY, den = 0.f;
    for (int sp = 0; sp < splits; sp++) mx = fmaxf(mx, scale_of[g][sp]);
    for (int sp = 0; sp < splits; sp++) {
      const float f = mx == -INFINITY ? 0.f : exp2f(scale_of[g][sp] - mx);  // -inf: no keys
      scale_of[g][sp] = f;
      den += f * sum_of[g][sp];
    }
    den_of[g] = den;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < group * head_dim; e += blockDim.x) {
    const int g = e / head_dim, d = e % head_dim;
    float num = 0.f;
#pragma unroll
    for (int sp = 0; sp < DS_MAX_SPLITS; sp++)
      if (sp < splits) num += scale_of[g][sp] * all[(sp * group + g) * stride + d];
    const float den = den_of[g];
    out[(u64)tok * q_width + (kvh * group + g) * head_dim + d] = from_f<T>(den > 0.f ? num / den : 0.f);
  }
}

// ---- Tensor-core attention for prefill chunks (bf16, sm_80 and newer) ----
// Same work items and rows as attention_impl (rows = tokens of a tile x the query heads of one
// kv head, <= 64), but S = QK^T and O += PV run on mma.sync.m16n8k16 (bf16 in, f32 out). Four
// warps, 16 rows each; keys and values stream through shared memory 64 at a time; softmax is
// online in f32 with one running max per row. Fragment layouts (PTX ISA), g = lane/4, t = lane%4:
//   A 16x16 (row-major): a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
//   B 16x8 (k x n):      b0 = (k 2t..2t+1, n g), b1 = (k 2t+8..2t+9, n g)
//   C 16x8:              c0, c1 = (g, 2t..2t+1), c2, c3 = (g+8, 2t..2t+1)
// The C layout of S matches the A layout of P, so probabilities never leave registers.
// Shared rows are padded by 8 elements so that the fragment loads hit 32 distinct banks.
#define MMA_KT 64
#define MMA_PAD 8

__device__ __forceinline__ void mma_bf16_16816(float* c, const u32* a, u32 b0, u32 b1) {
#if __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}


// Copies keys [k0, k0 + MMA_KT) of kv head `kvh` into shared memory; keys at or past `kend`
// become zeros (their probability is 0, and 0 x garbage could be NaN).
template <int D>
__device__ __forceinline__ void mma_load_kv(bf16_t (*sk)[D + MMA_PAD], bf16_t (*sv)[D + MMA_PAD],
                                            const bf16_t* k_cache, const bf16_t* v_cache,
                                            const u32* bt, int block_size, int kv_width, int kvh,
                                            int k0, int kend) {
  const int CH = D / 8;  // 16-byte chunks per key
  for (int e = threadIdx.x; e < MMA_KT * CH; e += blockDim.x) {
    const int j = e / CH, c = e % CH, kp = k0 + j;
    uint4 kv = make_uint4(0, 0, 0, 0), vv = kv;
    if (kp < kend) {
      const u64 slot = kv_slot(bt, kp, block_size);
      const u64 off = slot * kv_width + kvh * D + c * 8;
      kv = *(const uint4*)(k_cache + off);
      vv = *(const uint4*)(v_cache + off);
    }
    *(uint4*)&sk[j][c * 8] = kv;
    *(uint4*)&sv[j][c * 8] = vv;
  }
}

template <int D>
__device__ void attention_mma_impl(bf16_t* out, const bf16_t* q, const bf16_t* k_cache,
                                   const bf16_t* v_cache, const u32* work, const u32* q_start,
                                   const u32* q_len, const u32* ctx_len, const u32* block_tables,
                                   int bt_stride, int block_size, int num_heads, int num_kv_heads,
                                   int tile_q, float scale) {
  __shared__ __align__(16) bf16_t sk[MMA_KT][D + MMA_PAD];
  __shared__ __align__(16) bf16_t sv[MMA_KT][D + MMA_PAD];
  const int group = num_heads / num_kv_heads;
  const int seq = work[2 * blockIdx.x], q0 = work[2 * blockIdx.x + 1], kvh = blockIdx.y;
  const int qlen = q_len[seq], ctx = ctx_len[seq], qs = q_start[seq];
  const int nq = min(tile_q, qlen - q0);
  if (nq <= 0) return;
  const int rows = nq * group;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int kv_width = num_kv_heads * D, q_width = num_heads * D;
  const int first_pos = ctx - qlen + q0;  // position of the tile's first query
  const int kend = first_pos + nq;        // keys [0, kend) are visible to some row
  // This thread's two rows: g and g + 8 of the warp's 16. Rows past `rows` see no key.
  u64 qoff[2];
  int qpos[2];
  bool valid[2];
#pragma unroll
  for (int i = 0; i < 2; i++) {
    const int r = warp * 16 + g + 8 * i;
    valid[i] = r < rows;
    const int tok = qs + q0 + r / group, h = kvh * group + r % group;
    qoff[i] = valid[i] ? (u64)tok * q_width + (u64)h * D : 0;
    qpos[i] = valid[i] ? first_pos + r / group : -1;
  }
  u32 qf[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; kk++)
#pragma unroll
    for (int e = 0; e < 4; e++) {
      const int i = e & 1, col = 16 * kk + 2 * t + 8 * (e >> 1);
      qf[kk][e] = valid[i] ? *(const u32*)(q + qoff[i] + col) : 0u;
    }
  float o[D / 8][4];
#pragma unroll
  for (int nd = 0; nd < D / 8; nd++)
#pragma unroll
    for (int e = 0; e < 4; e++) o[nd][e] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  const float sl2 = scale * 1.4426950408889634f;  // softmax in base 2
  const u32* bt = block_tables + (u64)seq * bt_stride;
  for (int k0 = 0; k0 < kend; k0 += MMA_KT) {
    __syncthreads();  // the previous tile is no longer read
    mma_load_kv<D>(sk, sv, k_cache, v_cache, bt, block_size, kv_width, kvh, k0, kend);
    __syncthreads();
    float s[MMA_KT / 8][4];
#pragma unroll
    for (int nn = 0; nn < MMA_KT / 8; nn++)
#pragma unroll
      for (int e = 0; e < 4; e++) s[nn][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++)
#pragma unroll
      for (int nn = 0; nn < MMA_KT / 8; nn++) {
        const bf16_t* kr = &sk[nn * 8 + g][16 * kk + 2 * t];
        mma_bf16_16816(s[nn], qf[kk], *(const u32*)kr, *(const u32*)(kr + 8));
      }
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nn = 0; nn < MMA_KT / 8; nn++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int i = e >> 1, kp = k0 + nn * 8 + 2 * t + (e & 1);
        if (kp > qpos[i]) s[nn][e] = -INFINITY;  // causal (and past the context: kend > qpos)
        mx[i] = fmaxf(mx[i], s[nn][e]);
      }
    float mu[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
      mx[i] = fmaxf(mx[i], __shfl_xor_sync(FULL_MASK, mx[i], 1));
      mx[i] = fmaxf(mx[i], __shfl_xor_sync(FULL_MASK, mx[i], 2));
      const float m_new = fmaxf(m[i], mx[i]);
      mu[i] = m_new == -INFINITY ? 0.f : m_new * sl2;  // a row that saw no key yet stays at 0
      const float corr = exp2f(m[i] * sl2 - mu[i]);
      m[i] = m_new;
      l[i] *= corr;
#pragma unroll
      for (int nd = 0; nd < D / 8; nd++) { o[nd][2 * i] *= corr; o[nd][2 * i + 1] *= corr; }
    }
#pragma unroll
    for (int nn = 0; nn < MMA_KT / 8; nn++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int i = e >> 1;
        const float p = exp2f(s[nn][e] * sl2 - mu[i]);
        s[nn][e] = p;
        l[i] += p;  // this thread's share; the quad is summed at the end
      }
#pragma unroll
    for (int kk = 0; kk < MMA_KT / 16; kk++) {
      const u32 pa[4] = {pack_bf16x2(s[2 * kk][0], s[2 * kk][1]), pack_bf16x2(s[2 * kk][2], s[2 * kk][3]),
                         pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                         pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
      const int key = 16 * kk + 2 * t;
#pragma unroll
      for (int nd = 0; nd < D / 8; nd++) {
        const int dim = nd * 8 + g;
        const u32 b0 = (u32)sv[key][dim] | ((u32)sv[key + 1][dim] << 16);
        const u32 b1 = (u32)sv[key + 8][dim] | ((u32)sv[key + 9][dim] << 16);
        mma_bf16_16816(o[nd], pa, b0, b1);
      }
    }
  }
#pragma unroll
  for (int i = 0; i < 2; i++) {
    l[i] += __shfl_xor_sync(FULL_MASK, l[i], 1);
    l[i] += __shfl_xor_sync(FULL_MASK, l[i], 2);
    if (!valid[i]) continue;
    const float inv = l[i] > 0.f ? 1.f / l[i] : 0.f;
#pragma unroll
    for (int nd = 0; nd < D / 8; nd++)
      *(u32*)(out + qoff[i] + nd * 8 + 2 * t) = pack_bf16x2(o[nd][2 * i] * inv, o[nd][2 * i + 1] * inv);
  }
}

// Same arguments as attention_##S (head_dim is the template's D and is not read).
#define ATTENTION_MMA(D)                                                                           \
  extern "C" __global__ void __launch_bounds__(128) attention_mma##D##_bf16(                       \
      bf16_t* out, const bf16_t* q, const bf16_t* k_cache, const bf16_t* v_cache, const u32* work, \
      const u32* q_start, const u32* q_len, const u32* ctx_len, const u32* block_tables,           \
      int bt_stride, int block_size, int num_heads, int num_kv_heads, int head_dim, int tile_q,    \
      float scale) { PDL_ENTRY();                                                                               \
    attention_mma_impl<D>(out, q, k_cache, v_cache, work, q_start, q_len, ctx_len, block_tables,   \
                          bt_stride, block_size, num_heads, num_kv_heads, tile_q, scale);          \
  }
ATTENTION_MMA(64)
ATTENTION_MMA(128)

#define ATTENTION_KERNELS(T, S)                                                                    \
  extern "C" __global__ void __launch_bounds__(DS_THREADS) attention_decode_split_##S(                    \
      T* out, const T* q, const T* k_cache, const T* v_cache, const u32* q_start,                  \
      const u32* ctx_len, const u32* block_tables, int bt_stride, int block_size, int num_heads,   \
      int num_kv_heads, int head_dim, float scale, float* partial, u32* counters,                  \
      const T* k_new, const T* v_new, const u32* positions, const u32* slots,                      \
      const float* inv_freq, int interleaved) {                                                    \
    const DecodeRope rope = {k_new, v_new, positions, slots, inv_freq, interleaved};               \
    attention_decode_split_impl<T>(out, q, k_cache, v_cache, q_start, ctx_len, block_tables,       \
                                   bt_stride, block_size, num_heads, num_kv_heads, head_dim,       \
                                   scale, partial, counters, rope);                                \
  }                                                                                                \
  extern "C" __global__ void attention_##S(                                                        \
      T* out, const T* q, const T* k_cache, const T* v_cache, const u32* work, const u32* q_start, \
      const u32* q_len, const u32* ctx_len, const u32* block_tables, int bt_stride,                \
      int block_size, int num_heads, int num_kv_heads, int head_dim, int tile_q, float scale) { PDL_ENTRY();    \
    attention_impl<T>(out, q, k_cache, v_cache, work, q_start, q_len, ctx_len, block_tables,       \
                      bt_stride, block_size, num_heads, num_kv_heads, head_dim, tile_q, scale);    \
  }                                                                                                \
  extern "C" __global__ void attention_decode_##S(                                                 \
      T* out, const T* q, const T* k_cache, const T* v_cache, const u32* q_start,                  \
      const u32* ctx_len, const u32* block_tables, int bt_stride, int block_size, int num_heads,   \
      int num_kv_heads, int head_dim, float scale, float* /* partial */, u32* /* counters */,      \
      const T* k_new, const T* v_new, const u32* positions, const u32* slots,                      \
      const float* inv_freq, int interleaved) {                                                    \
    const DecodeRope rope = {k_new, v_new, positions, slots, inv_freq, interleaved};               \
    attention_decode_impl<T>(out, q, k_cache, v_cache, q_start, ctx_len, block_tables, bt_stride,  \
                             block_size, num_heads, num_kv_heads, head_dim, scale, rope);          \
  }                                                                                                \

ATTENTION_KERNELS(float, f32)
ATTENTION_KERNELS(bf16_t, bf16)
