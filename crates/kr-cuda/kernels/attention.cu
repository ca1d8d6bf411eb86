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
#pragma unroll
  for (int rr = 0; rr < ATT_RPW; rr++) {
    m[rr] = -INFINITY; l[rr] = 0.f;
#pragma unroll
    for (int dd = 0; dd < ATT_DPL; dd++) acc[rr][dd] = 0.f;
  }
  const u32* bt = block_tables + (u64)seq * bt_stride;
  for (int k0 = 0; k0 < kend; k0 += ATT_KC) {
    __syncthreads();
    for (int e = threadIdx.x; e < ATT_KC * head_dim; e += blockDim.x) {
      const int j = e / head_dim, d = e % head_dim, kp = k0 + j;
      float kv = 0.f, vv = 0.f;
      if (kp < kend) {
        const u64 slot = (u64)bt[kp / block_size] * block_size + kp % block_size;
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
                                      int num_heads, int num_kv_heads, int head_dim, float scale) {
  __shared__ float sq[DEC_MAX_GROUP][128];
  __shared__ float part_m[DEC_WARPS][DEC_MAX_GROUP], part_l[DEC_WARPS][DEC_MAX_GROUP];
  __shared__ float part_acc[DEC_WARPS][DEC_MAX_GROUP][128];
  const int group = num_heads / num_kv_heads;
  const int seq = blockIdx.x, kvh = blockIdx.y;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int ctx = ctx_len[seq], tok = q_start[seq];
  const int kv_width = num_kv_heads * head_dim, q_width = num_heads * head_dim;
  for (int e = threadIdx.x; e < group * head_dim; e += blockDim.x) {
    const int g = e / head_dim, d = e % head_dim;
    sq[g][d] = to_f(q[(u64)tok * q_width + (kvh * group + g) * head_dim + d]) * scale;
  }
  __syncthreads();
  float m[DEC_MAX_GROUP], l[DEC_MAX_GROUP], acc[DEC_MAX_GROUP][ATT_DPL];
#pragma unroll
  for (int g = 0; g < DEC_MAX_GROUP; g++) {
    m[g] = -INFINITY; l[g] = 0.f;
#pragma unroll
    for (int dd = 0; dd < ATT_DPL; dd++) acc[g][dd] = 0.f;
  }
  const u32* bt = block_tables + (u64)seq * bt_stride;
  for (int k0 = warp * 32; k0 < ctx; k0 += DEC_WARPS * 32) {
    const int kp = k0 + lane;
    u64 off = 0;
    float s[DEC_MAX_GROUP];
#pragma unroll
    for (int g = 0; g < DEC_MAX_GROUP; g++) s[g] = -INFINITY;
    if (kp < ctx) {
      off = ((u64)bt[kp / block_size] * block_size + kp % block_size) * kv_width + kvh * head_dim;
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
// are cut into `splits` chunks, one block of DS_WARPS warps each; a warp takes one key at a
// time with the lanes splitting the head dimension (one coalesced row load), DS_UNROLL keys
// in flight. Each block writes its partial softmax state (per query head: max, sum, weighted
// values) to `partial`; the last block of a (sequence, kv head) to finish, counted in
// `counters` (zero between steps: the merging block resets its counter), merges them into
// `out`. A sequence with ctx_len 0 is padding and writes zeros.
#define DS_WARPS 4
#define DS_UNROLL 4
#define DS_MAX_DPL 4  // head_dim up to 128
#define DS_MAX_SPLITS 16

template <typename T>
__device__ void attention_decode_split_impl(T* out, const T* q, const T* k_cache, const T* v_cache,
                                            const u32* q_start, const u32* ctx_len,
                                            const u32* block_tables, int bt_stride, int block_size,
                                            int num_heads, int num_kv_heads, int head_dim,
                                            float scale, float* partial, u32* counters) {
  __shared__ float wm[DS_WARPS][DEC_MAX_GROUP], wl[DS_WARPS][DEC_MAX_GROUP];
  __shared__ float wacc[DS_WARPS][DEC_MAX_GROUP][128];
  __shared__ bool is_last;
  const int group = num_heads / num_kv_heads, splits = gridDim.z;
  const int seq = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int ctx = ctx_len[seq], tok = q_start[seq];
  const int kv_width = num_kv_heads * head_dim, q_width = num_heads * head_dim;
  const int dpl = (head_dim + 31) / 32;  // elements of a row per lane
  const int chunk = (ctx + splits - 1) / splits;
  const int k_begin = split * chunk, k_end = min(ctx, k_begin + chunk);
  float qr[DEC_MAX_GROUP][DS_MAX_DPL], m[DEC_MAX_GROUP], l[DEC_MAX_GROUP];
  float acc[DEC_MAX_GROUP][DS_MAX_DPL];
#pragma unroll
  for (int g = 0; g < DEC_MAX_GROUP; g++) {
    m[g] = -INFINITY;
    l[g] = 0.f;
#pragma unroll
    for (int e = 0; e < DS_MAX_DPL; e++) {
      const int d = lane * dpl + e;
      const bool ok = g < group && e < dpl && d < head_dim;
      qr[g][e] = ok ? to_f(q[(u64)tok * q_width + (kvh * group + g) * head_dim + d]) * scale : 0.f;
      acc[g][e] = 0.f;
    }
  }
  const u32* bt = block_tables + (u64)seq * bt_stride;
  for (int base = k_begin + warp; base < k_end; base += DS_WARPS * DS_UNROLL) {
    float kf[DS_UNROLL][DS_MAX_DPL], vf[DS_UNROLL][DS_MAX_DPL];
#pragma unroll
    for (int u = 0; u < DS_UNROLL; u++) {
      const int kp = base + u * DS_WARPS;
      u64 off = 0;
      if (kp < k_end) off = ((u64)bt[kp / block_size] * block_size + kp % block_size) * kv_width + kvh * head_dim;
#pragma unroll
      for (int e = 0; e < DS_MAX_DPL; e++) {
        const int d = lane * dpl + e;
        const bool ok = kp < k_end && e < dpl && d < head_dim;
        kf[u][e] = ok ? to_f(k_cache[off + d]) : 0.f;
        vf[u][e] = ok ? to_f(v_cache[off + d]) : 0.f;
      }
    }
#pragma unroll
    for (int u = 0; u < DS_UNROLL; u++) {
      if (base + u * DS_WARPS >= k_end) break;  // uniform across the warp
#pragma unroll
      for (int g = 0; g < DEC_MAX_GROUP; g++) {
        if (g >= group) break;
        float s = 0.f;
#pragma unroll
        for (int e = 0; e < DS_MAX_DPL; e++) s += qr[g][e] * kf[u][e];
        s = warp_sum(s);
        const float m_new = fmaxf(m[g], s);
        const float corr = expf(m[g] - m_new);  // m = -inf at first: corr = 0
        const float p = expf(s - m_new);
        l[g] = l[g] * corr + p;
#pragma unroll
        for (int e = 0; e < DS_MAX_DPL; e++) acc[g][e] = acc[g][e] * corr + p * vf[u][e];
        m[g] = m_new;
      }
    }
  }
  // This block's state: merge the warps through shared memory.
  for (int g = 0; g < group; g++) {
    if (lane == 0) { wm[warp][g] = m[g]; wl[warp][g] = l[g]; }
    for (int e = 0; e < dpl; e++) {
      const int d = lane * dpl + e;
      if (d < head_dim) wacc[warp][g][d] = acc[g][e];
    }
  }
  __syncthreads();
  const int stride = head_dim + 2;  // per head: values, then max, then sum
  float* mine = partial + (((u64)seq * num_kv_heads + kvh) * splits + split) * group * stride;
  for (int e = threadIdx.x; e < group * head_dim; e += blockDim.x) {
    const int g = e / head_dim, d = e % head_dim;
    float mx = -INFINITY;
    for (int w = 0; w < DS_WARPS; w++) mx = fmaxf(mx, wm[w][g]);
    float num = 0.f, den = 0.f;
    if (mx != -INFINITY)
      for (int w = 0; w < DS_WARPS; w++) {
        const float f = expf(wm[w][g] - mx);  // a warp with no key has wm = -inf: f = 0
        num += f * wacc[w][g][d];
        den += f * wl[w][g];
      }
    mine[g * stride + d] = num;
    if (d == 0) { mine[g * stride + head_dim] = mx; mine[g * stride + head_dim + 1] = den; }
  }
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
      const float f = mx == -INFINITY ? 0.f : expf(scale_of[g][sp] - mx);  // -inf: no keys
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

// Two floats as a bf16 pair, the first in the low half (the lower column index).
__device__ __forceinline__ u32 pack_bf16x2(float lo, float hi) {
  return (u32)from_f<bf16_t>(lo) | ((u32)from_f<bf16_t>(hi) << 16);
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
      const u64 slot = (u64)bt[kp / block_size] * block_size + kp % block_size;
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
  extern "C" __global__ void __launch_bounds__(128) attention_decode_split_##S(                    \
      T* out, const T* q, const T* k_cache, const T* v_cache, const u32* q_start,                  \
      const u32* ctx_len, const u32* block_tables, int bt_stride, int block_size, int num_heads,   \
      int num_kv_heads, int head_dim, float scale, float* partial, u32* counters) { PDL_ENTRY();   \
    attention_decode_split_impl<T>(out, q, k_cache, v_cache, q_start, ctx_len, block_tables,       \
                                   bt_stride, block_size, num_heads, num_kv_heads, head_dim,       \
                                   scale, partial, counters);                                      \
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
      int num_kv_heads, int head_dim, float scale, float* /* partial */, u32* /* counters */) {    \
    PDL_ENTRY();                                                                                   \
    attention_decode_impl<T>(out, q, k_cache, v_cache, q_start, ctx_len, block_tables,          \
                                bt_stride, block_size, num_heads, num_kv_heads, head_dim, scale);  \
  }                                                                                                \

ATTENTION_KERNELS(float, f32)
ATTENTION_KERNELS(bf16_t, bf16)
