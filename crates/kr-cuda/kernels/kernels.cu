// kr-cuda kernels: every operation of the Backend trait for a packed batch.
// Compiled at run time by NVRTC (no CUDA headers needed: bf16 is handled as raw bits).
// Each kernel exists for two element types, suffixed _f32 and _bf16; norms, biases and
// RoPE frequencies are always f32, and every reduction accumulates in f32.
// Slot value 0xffffffff means "padding row: write nothing to the KV cache".

typedef unsigned short bf16_t;
typedef unsigned int u32;
typedef unsigned long long u64;

#define FULL_MASK 0xffffffffu
#define NO_SLOT 0xffffffffu
#define INFINITY __int_as_float(0x7f800000)

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bf16_t x) { return __uint_as_float(((u32)x) << 16); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ bf16_t from_f<bf16_t>(float v) {
  u32 u = __float_as_uint(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((u >> 16) | 0x40u);  // NaN stays NaN
  u32 round = ((u >> 16) & 1u) + 0x7fffu;  // round to nearest, ties to even
  return (bf16_t)((u + round) >> 16);
}

// 16 bytes of T as floats: 4 for f32, 8 for bf16.
__device__ __forceinline__ void unpack16(const uint4 v, float* out, float) {
  out[0] = __uint_as_float(v.x); out[1] = __uint_as_float(v.y);
  out[2] = __uint_as_float(v.z); out[3] = __uint_as_float(v.w);
}
__device__ __forceinline__ void unpack16(const uint4 v, float* out, bf16_t) {
  out[0] = __uint_as_float(v.x << 16); out[1] = __uint_as_float(v.x & 0xffff0000u);
  out[2] = __uint_as_float(v.y << 16); out[3] = __uint_as_float(v.y & 0xffff0000u);
  out[4] = __uint_as_float(v.z << 16); out[5] = __uint_as_float(v.z & 0xffff0000u);
  out[6] = __uint_as_float(v.w << 16); out[7] = __uint_as_float(v.w & 0xffff0000u);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32); every thread gets the result.
__device__ float block_sum(float v) {
  __shared__ float partial[32];
  v = warp_sum(v);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();  // `partial` may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = (threadIdx.x < (blockDim.x >> 5)) ? partial[threadIdx.x] : 0.f;
  if (warp == 0) v = warp_sum(v);
  if (threadIdx.x == 0) partial[0] = v;
  __syncthreads();
  return partial[0];
}

// out[t, :] = table[ids[t], :]. Grid: tokens.
template <typename T>
__device__ void embed_impl(T* out, const T* table, const u32* ids, int cols) {
  const u64 src = (u64)ids[blockIdx.x] * cols, dst = (u64)blockIdx.x * cols;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) out[dst + c] = table[src + c];
}

// out = rms_norm(x) * w per row. Grid: rows.
template <typename T>
__device__ void rms_norm_impl(T* out, const T* x, const float* w, int cols, float eps) {
  const u64 base = (u64)blockIdx.x * cols;
  float ss = 0.f;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) { float v = to_f(x[base + c]); ss += v * v; }
  const float inv = rsqrtf(block_sum(ss) / cols + eps);
  for (int c = threadIdx.x; c < cols; c += blockDim.x)
    out[base + c] = from_f<T>(to_f(x[base + c]) * inv * w[c]);
}

// x += delta (stored in T), then out = rms_norm(x) * w. Grid: rows.
template <typename T>
__device__ void add_rms_norm_impl(T* out, T* x, const T* delta, const float* w, int cols, float eps) {
  const u64 base = (u64)blockIdx.x * cols;
  float ss = 0.f;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    const T s = from_f<T>(to_f(x[base + c]) + to_f(delta[base + c]));
    x[base + c] = s;
    const float v = to_f(s);
    ss += v * v;
  }
  const float inv = rsqrtf(block_sum(ss) / cols + eps);
  for (int c = threadIdx.x; c < cols; c += blockDim.x)
    out[base + c] = from_f<T>(to_f(x[base + c]) * inv * w[c]);
}

template <typename T>
__device__ void add_inplace_impl(T* x, const T* delta, u64 n) {
  for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
    x[i] = from_f<T>(to_f(x[i]) + to_f(delta[i]));
}

template <typename T>
__device__ void silu_mul_impl(T* out, const T* gate, const T* up, u64 n) {
  for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
    const float g = to_f(gate[i]);
    out[i] = from_f<T>(g / (1.f + expf(-g)) * to_f(up[i]));
  }
}

// y[t, c] += bias[c]. Grid-stride over t * cols.
template <typename T>
__device__ void add_bias_impl(T* y, const float* bias, int cols, u64 n) {
  for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
    y[i] = from_f<T>(to_f(y[i]) + bias[i % cols]);
}

// RMSNorm of each head (Qwen3 q/k norm), in place. One warp per (token, head); 8 per block.
template <typename T>
__device__ void head_rms_norm_impl(T* x, const float* w, int num_heads_total, int head_dim, float eps) {
  const int head = blockIdx.x * 8 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (head >= num_heads_total) return;
  T* h = x + (u64)head * head_dim;
  float ss = 0.f;
  for (int d = lane; d < head_dim; d += 32) { float v = to_f(h[d]); ss += v * v; }
  const float inv = rsqrtf(warp_sum(ss) / head_dim + eps);
  for (int d = lane; d < head_dim; d += 32) h[d] = from_f<T>(to_f(h[d]) * inv * w[d]);
}

__device__ __forceinline__ void rope_pair(int i, int half, int interleaved, int* a, int* b) {
  if (interleaved) { *a = 2 * i; *b = 2 * i + 1; } else { *a = i; *b = i + half; }
}

// Rotates q and k of token blockIdx.x, then writes k and v to the cache slot of the token.
// Cache layout per layer: [slot][kv_heads * head_dim]. The angles of the token are computed
// once into shared memory (precise sincosf is slow for large angles) and shared by all heads.
template <typename T>
__device__ void rope_write_kv_impl(T* q, T* k, const T* v, const u32* positions, const u32* slots,
                                   const float* inv_freq, T* k_cache, T* v_cache, int num_heads,
                                   int num_kv_heads, int head_dim, int interleaved) {
  __shared__ float cos_t[128], sin_t[128];
  const int t = blockIdx.x, half = head_dim / 2;
  const float pos = (float)positions[t];
  for (int i = threadIdx.x; i < half; i += blockDim.x) sincosf(pos * inv_freq[i], &sin_t[i], &cos_t[i]);
  __syncthreads();
  const u32 slot = slots[t];
  const int q_width = num_heads * head_dim, kv_width = num_kv_heads * head_dim;
  T* qt = q + (u64)t * q_width;
  T* kt = k + (u64)t * kv_width;
  for (int p = threadIdx.x; p < (num_heads + num_kv_heads) * half; p += blockDim.x) {
    const bool is_q = p < num_heads * half;
    const int pp = is_q ? p : p - num_heads * half;
    const int head = pp / half, i = pp % half;
    const float s = sin_t[i], c = cos_t[i];
    int a, b;
    rope_pair(i, half, interleaved, &a, &b);
    T* h = (is_q ? qt : kt) + head * head_dim;
    const float x0 = to_f(h[a]), x1 = to_f(h[b]);
    const T r0 = from_f<T>(x0 * c - x1 * s), r1 = from_f<T>(x1 * c + x0 * s);
    h[a] = r0;
    h[b] = r1;
    if (!is_q && slot != NO_SLOT) {
      T* kc = k_cache + (u64)slot * kv_width + head * head_dim;
      kc[a] = r0;
      kc[b] = r1;
    }
  }
  if (slot != NO_SLOT) {
    const T* vt = v + (u64)t * kv_width;
    T* vc = v_cache + (u64)slot * kv_width;
    for (int e = threadIdx.x; e < kv_width; e += blockDim.x) vc[e] = vt[e];
  }
}

// y[t, r] = sum_c x[t, c] * w[r, c] (+ bias[r]) for up to 8 tokens: one warp streams one
// weight row with 16-byte loads, four in flight per lane, so the weights are read once for
// all tokens (batch-1 decode is bound by this read). Weights bypass L1 (__ldcs) so the
// activations, re-read for every row, stay there. Needs cols * sizeof(T) % 16 == 0.
#define GEMV_MAX_T 8
template <typename T, int NT>
__device__ __forceinline__ void gemv_partial(float* acc, const T* x, const T* w_row, int cols, int lane) {
  const int VEC = 16 / sizeof(T);
  const int nv = cols / VEC;
  const uint4* wr = (const uint4*)w_row;
  const uint4* xr = (const uint4*)x;
  int v = lane;
  for (; v + 96 < nv; v += 128) {
    uint4 wv[4];
#pragma unroll
    for (int u = 0; u < 4; u++) wv[u] = __ldcs(wr + v + 32 * u);
#pragma unroll
    for (int u = 0; u < 4; u++) {
      float wf[8];
      unpack16(wv[u], wf, T());
#pragma unroll
      for (int b = 0; b < NT; b++) {
        float xf[8];
        unpack16(__ldg(xr + (u64)b * nv + v + 32 * u), xf, T());
#pragma unroll
        for (int e = 0; e < VEC; e++) acc[b] += wf[e] * xf[e];
      }
    }
  }
  for (; v < nv; v += 32) {
    float wf[8];
    unpack16(__ldcs(wr + v), wf, T());
#pragma unroll
    for (int b = 0; b < NT; b++) {
      float xf[8];
      unpack16(__ldg(xr + (u64)b * nv + v), xf, T());
#pragma unroll
      for (int e = 0; e < VEC; e++) acc[b] += wf[e] * xf[e];
    }
  }
}

template <typename T, int NT>
__device__ __forceinline__ void gemv_rows(T* y, const T* x, const T* w, const float* bias, int rows,
                                          int cols, int r, int lane) {
  float acc[NT];
#pragma unroll
  for (int b = 0; b < NT; b++) acc[b] = 0.f;
  gemv_partial<T, NT>(acc, x, w + (u64)r * cols, cols, lane);
#pragma unroll
  for (int b = 0; b < NT; b++) {
    const float s = warp_sum(acc[b]);
    if (lane == 0) y[(u64)b * rows + r] = from_f<T>(s + (bias ? bias[r] : 0.f));
  }
}

// The q, k and v projections of the same tokens in one launch (decode reads all three weight
// matrices back to back instead of in three kernels): warps [0, nq) take wq, the next nk take
// wk, the next nv take wv.
template <typename T, int NT>
__device__ void gemv_qkv_impl(T* yq, T* yk, T* yv, const T* x, const T* wq, const T* wk,
                              const T* wv, const float* bq, const float* bk, const float* bv,
                              int nq, int nk, int nv, int cols) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  int r = blockIdx.x * 8 + warp;
  if (r < nq) { gemv_rows<T, NT>(yq, x, wq, bq, nq, cols, r, lane); return; }
  r -= nq;
  if (r < nk) { gemv_rows<T, NT>(yk, x, wk, bk, nk, cols, r, lane); return; }
  r -= nk;
  if (r < nv) gemv_rows<T, NT>(yv, x, wv, bv, nv, cols, r, lane);
}

// y = silu(x·Wg) ⊙ (x·Wu): one warp streams row r of both matrices; the gate and up values
// never leave registers (no separate SiLU·mul kernel, no rounding of the two halves).
template <typename T, int NT>
__device__ void gemv_gate_up_impl(T* y, const T* x, const T* wg, const T* wu, int rows, int cols) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int r = blockIdx.x * 8 + warp;
  if (r >= rows) return;
  float ag[NT], au[NT];
#pragma unroll
  for (int b = 0; b < NT; b++) { ag[b] = 0.f; au[b] = 0.f; }
  gemv_partial<T, NT>(ag, x, wg + (u64)r * cols, cols, lane);
  gemv_partial<T, NT>(au, x, wu + (u64)r * cols, cols, lane);
#pragma unroll
  for (int b = 0; b < NT; b++) {
    const float g = warp_sum(ag[b]), u = warp_sum(au[b]);
    if (lane == 0) y[(u64)b * rows + r] = from_f<T>(g / (1.f + expf(-g)) * u);
  }
}

// One kernel per token count (gemv1 ... gemv8), so that the small cases keep few registers
// and high occupancy (a switch inside one kernel would size every case like the largest).
template <typename T, int NT>
__device__ void gemv_impl(T* y, const T* x, const T* w, const float* bias, int rows, int cols) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int r = blockIdx.x * 8 + warp;
  if (r < rows) gemv_rows<T, NT>(y, x, w, bias, rows, cols, r, lane);
}

// out[i, :] = x[rows[i], :]. Grid: output rows.
template <typename T>
__device__ void gather_rows_impl(T* out, const T* x, const u32* rows, int cols) {
  const u64 src = (u64)rows[blockIdx.x] * cols, dst = (u64)blockIdx.x * cols;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) out[dst + c] = x[src + c];
}

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
template <typename T, int KCH>
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
      // The key row is read KCH 16-byte loads at a time, all issued before any is used: with
      // KCH = 8 a 128-dim bf16 key costs two memory latencies instead of sixteen (few blocks:
      // latency-bound), but the registers lower occupancy, so many blocks use KCH = 1.
      const int VEC = 16 / sizeof(T), nvec = head_dim / VEC;
      for (int c0 = 0; c0 < nvec; c0 += KCH) {
        uint4 kr[KCH];
#pragma unroll
        for (int i = 0; i < KCH; i++)
          if (c0 + i < nvec) kr[i] = *(const uint4*)(k_cache + off + (c0 + i) * VEC);
#pragma unroll
        for (int i = 0; i < KCH; i++) {
          if (c0 + i < nvec) {
            float kf[8];
            unpack16(kr[i], kf, T());
#pragma unroll
            for (int g = 0; g < DEC_MAX_GROUP; g++) {
              if (g < group) {
#pragma unroll
                for (int e = 0; e < VEC; e++) s[g] += sq[g][(c0 + i) * VEC + e] * kf[e];
              }
            }
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

// Greedy sampling on the device: ids[row] = argmax (lowest index on ties). Grid: rows.
template <typename T>
__device__ void argmax_impl(u32* ids, const T* logits, int cols) {
  __shared__ float best_v[32];
  __shared__ u32 best_i[32];
  const T* row = logits + (u64)blockIdx.x * cols;
  float v = -INFINITY;
  u32 idx = 0xffffffffu;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    const float x = to_f(row[c]);
    if (x > v || (x == v && (u32)c < idx)) { v = x; idx = c; }
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(FULL_MASK, v, o);
    const u32 oi = __shfl_xor_sync(FULL_MASK, idx, o);
    if (ov > v || (ov == v && oi < idx)) { v = ov; idx = oi; }
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) { best_v[warp] = v; best_i[warp] = idx; }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < (int)(blockDim.x >> 5); w++)
      if (best_v[w] > v || (best_v[w] == v && best_i[w] < idx)) { v = best_v[w]; idx = best_i[w]; }
    ids[blockIdx.x] = idx;
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

#define ATTENTION_MMA(D)                                                                           \
  extern "C" __global__ void __launch_bounds__(128) attention_mma##D##_bf16(                       \
      bf16_t* out, const bf16_t* q, const bf16_t* k_cache, const bf16_t* v_cache, const u32* work, \
      const u32* q_start, const u32* q_len, const u32* ctx_len, const u32* block_tables,           \
      int bt_stride, int block_size, int num_heads, int num_kv_heads, int tile_q, float scale) {   \
    attention_mma_impl<D>(out, q, k_cache, v_cache, work, q_start, q_len, ctx_len, block_tables,   \
                          bt_stride, block_size, num_heads, num_kv_heads, tile_q, scale);          \
  }
ATTENTION_MMA(64)
ATTENTION_MMA(128)

// Splits the output of one GEMM over the adjacent wq|wk|wv, y = [t, na + nb + nc], into q, k
// and v, adding each projection's bias (may be null). Grid: tokens.
template <typename T>
__device__ void split_qkv_impl(T* a, T* b, T* c, const T* y, const float* ba, const float* bb,
                               const float* bc, int na, int nb, int nc) {
  const int n = na + nb + nc;
  const u64 row = blockIdx.x;
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    const float v = to_f(y[row * n + j]);
    if (j < na) a[row * na + j] = from_f<T>(v + (ba ? ba[j] : 0.f));
    else if (j < na + nb) b[row * nb + j - na] = from_f<T>(v + (bb ? bb[j - na] : 0.f));
    else c[row * nc + j - na - nb] = from_f<T>(v + (bc ? bc[j - na - nb] : 0.f));
  }
}

// out[t, i] = silu(y[t, i]) * y[t, inter + i], y the output of one GEMM over the adjacent
// w_gate|w_up. Grid-stride over t * inter.
template <typename T>
__device__ void silu_mul_packed_impl(T* out, const T* y, int inter, u64 n) {
  for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
    const u64 t = i / inter, c = i % inter;
    const float g = to_f(y[t * 2 * inter + c]);
    out[i] = from_f<T>(g / (1.f + expf(-g)) * to_f(y[t * 2 * inter + inter + c]));
  }
}

// Converts T to f32 (for copying logits to the host).
template <typename T>
__device__ void to_f32_impl(float* out, const T* x, u64 n) {
  for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
    out[i] = to_f(x[i]);
}

#define GEMV(T, S, N)                                                                              \
  extern "C" __global__ void __launch_bounds__(256)                                                \
      gemv##N##_##S(T* y, const T* x, const T* w, const float* bias, int rows, int cols) {         \
    gemv_impl<T, N>(y, x, w, bias, rows, cols);                                                    \
  }

#define GEMV_FUSED(T, S, N)                                                                        \
  extern "C" __global__ void __launch_bounds__(256) gemv_qkv##N##_##S(                             \
      T* yq, T* yk, T* yv, const T* x, const T* wq, const T* wk, const T* wv, const float* bq,     \
      const float* bk, const float* bv, int nq, int nk, int nv, int cols) {                        \
    gemv_qkv_impl<T, N>(yq, yk, yv, x, wq, wk, wv, bq, bk, bv, nq, nk, nv, cols);                  \
  }                                                                                                \
  extern "C" __global__ void __launch_bounds__(256) gemv_gate_up##N##_##S(                         \
      T* y, const T* x, const T* wg, const T* wu, int rows, int cols) {                            \
    gemv_gate_up_impl<T, N>(y, x, wg, wu, rows, cols);                                             \
  }

#define KERNELS(T, S)                                                                              \
  extern "C" __global__ void __launch_bounds__(1024) embed_##S(T* out, const T* table, const u32* ids, int cols) {         \
    embed_impl<T>(out, table, ids, cols);                                                          \
  }                                                                                                \
  extern "C" __global__ void __launch_bounds__(1024) rms_norm_##S(T* out, const T* x, const float* w, int cols, float eps) { \
    rms_norm_impl<T>(out, x, w, cols, eps);                                                        \
  }                                                                                                \
  extern "C" __global__ void __launch_bounds__(1024) add_rms_norm_##S(T* out, T* x, const T* delta, const float* w, int cols, \
                                              float eps) {                                         \
    add_rms_norm_impl<T>(out, x, delta, w, cols, eps);                                             \
  }                                                                                                \
  extern "C" __global__ void add_inplace_##S(T* x, const T* delta, u64 n) {                        \
    add_inplace_impl<T>(x, delta, n);                                                              \
  }                                                                                                \
  extern "C" __global__ void silu_mul_##S(T* out, const T* gate, const T* up, u64 n) {             \
    silu_mul_impl<T>(out, gate, up, n);                                                            \
  }                                                                                                \
  extern "C" __global__ void add_bias_##S(T* y, const float* bias, int cols, u64 n) {              \
    add_bias_impl<T>(y, bias, cols, n);                                                            \
  }                                                                                                \
  extern "C" __global__ void head_rms_norm_##S(T* x, const float* w, int heads, int head_dim,      \
                                               float eps) {                                        \
    head_rms_norm_impl<T>(x, w, heads, head_dim, eps);                                             \
  }                                                                                                \
  extern "C" __global__ void __launch_bounds__(1024) rope_write_kv_##S(T* q, T* k, const T* v, const u32* positions,       \
                                               const u32* slots, const float* inv_freq, T* k_cache, \
                                               T* v_cache, int num_heads, int num_kv_heads,        \
                                               int head_dim, int interleaved) {                    \
    rope_write_kv_impl<T>(q, k, v, positions, slots, inv_freq, k_cache, v_cache, num_heads,        \
                          num_kv_heads, head_dim, interleaved);                                    \
  }                                                                                                \
  GEMV(T, S, 1) GEMV(T, S, 2) GEMV(T, S, 3) GEMV(T, S, 4)                                         \
  GEMV(T, S, 5) GEMV(T, S, 6) GEMV(T, S, 7) GEMV(T, S, 8)                                          \
  GEMV_FUSED(T, S, 1) GEMV_FUSED(T, S, 2) GEMV_FUSED(T, S, 3) GEMV_FUSED(T, S, 4)                 \
  GEMV_FUSED(T, S, 5) GEMV_FUSED(T, S, 6) GEMV_FUSED(T, S, 7) GEMV_FUSED(T, S, 8)                 \
  extern "C" __global__ void __launch_bounds__(1024) gather_rows_##S(T* out, const T* x, const u32* rows, int cols) {      \
    gather_rows_impl<T>(out, x, rows, cols);                                                       \
  }                                                                                                \
  extern "C" __global__ void attention_##S(                                                        \
      T* out, const T* q, const T* k_cache, const T* v_cache, const u32* work, const u32* q_start, \
      const u32* q_len, const u32* ctx_len, const u32* block_tables, int bt_stride,                \
      int block_size, int num_heads, int num_kv_heads, int head_dim, int tile_q, float scale) {    \
    attention_impl<T>(out, q, k_cache, v_cache, work, q_start, q_len, ctx_len, block_tables,       \
                      bt_stride, block_size, num_heads, num_kv_heads, head_dim, tile_q, scale);    \
  }                                                                                                \
  extern "C" __global__ void attention_decode_##S(                                                 \
      T* out, const T* q, const T* k_cache, const T* v_cache, const u32* q_start,                  \
      const u32* ctx_len, const u32* block_tables, int bt_stride, int block_size, int num_heads,   \
      int num_kv_heads, int head_dim, float scale) {                                               \
    attention_decode_impl<T, 1>(out, q, k_cache, v_cache, q_start, ctx_len, block_tables,          \
                                bt_stride, block_size, num_heads, num_kv_heads, head_dim, scale);  \
  }                                                                                                \
  extern "C" __global__ void attention_decode_few_##S(                                             \
      T* out, const T* q, const T* k_cache, const T* v_cache, const u32* q_start,                  \
      const u32* ctx_len, const u32* block_tables, int bt_stride, int block_size, int num_heads,   \
      int num_kv_heads, int head_dim, float scale) {                                               \
    attention_decode_impl<T, 8>(out, q, k_cache, v_cache, q_start, ctx_len, block_tables,          \
                                bt_stride, block_size, num_heads, num_kv_heads, head_dim, scale);  \
  }                                                                                                \
  extern "C" __global__ void split_qkv_##S(T* a, T* b, T* c, const T* y, const float* ba,         \
                                           const float* bb, const float* bc, int na, int nb,       \
                                           int nc) {                                               \
    split_qkv_impl<T>(a, b, c, y, ba, bb, bc, na, nb, nc);                                         \
  }                                                                                                \
  extern "C" __global__ void silu_mul_packed_##S(T* out, const T* y, int inter, u64 n) {           \
    silu_mul_packed_impl<T>(out, y, inter, n);                                                     \
  }                                                                                                \
  extern "C" __global__ void argmax_##S(u32* ids, const T* logits, int cols) {                     \
    argmax_impl<T>(ids, logits, cols);                                                             \
  }                                                                                                \
  extern "C" __global__ void to_f32_##S(float* out, const T* x, u64 n) { to_f32_impl<T>(out, x, n); }

KERNELS(float, f32)
KERNELS(bf16_t, bf16)
