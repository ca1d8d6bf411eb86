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
                               int num_kv_heads, int head_dim, int tile_q, float scale, int window,
                               float softcap) {
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
  // With a window, keys before the first row's window (klo) are seen by no row, and their
  // blocks may already be freed (NO_BLOCK): they are neither loaded nor read.
  const int klo = window > 0 ? max(0, first_pos + 1 - window) : 0;
  for (int k0 = klo / ATT_KC * ATT_KC; k0 < kend; k0 += ATT_KC) {
    __syncthreads();
    for (int e = threadIdx.x; e < ATT_KC * head_dim; e += blockDim.x) {
      const int j = e / head_dim, d = e % head_dim, kp = k0 + j;
      float kv = 0.f, vv = 0.f;
      if (kp >= klo && kp < kend) {
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
        if (kp <= qpos && (window <= 0 || kp > qpos - window)) {
          float dot = 0.f;
          for (int d = 0; d < head_dim; d++) dot += sq[r * head_dim + d] * sk[lane * (head_dim + 1) + d];
          s = soft_cap(dot * scale, softcap, 1.f);
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

// ---- Tensor-core attention for prefill chunks (bf16, sm_80 and newer) ----
// Same work items and rows as attention_impl (rows = tokens of a tile x the query heads of one
// kv head, <= 64), but S = QK^T and O += PV run on mma.sync.m16n8k16 (bf16 in, f32 out). Four
// warps, 16 rows each; keys and values stream through two shared-memory tiles of 64 (the next
// one copied by cp.async while this one is computed; dynamic shared memory, mma_smem in
// attention.rs), their B fragments read by ldmatrix (transposed for V); softmax is online in
// f32 with one running max per row. Fragment layouts (PTX ISA), g = lane/4, t = lane%4:
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


// A shared-memory tile of MMA_KT keys and their values, rows padded by MMA_PAD elements
// (16 bytes: ldmatrix's 8 row addresses of a matrix then fall on distinct banks).
template <int D>
struct MmaTile {
  bf16_t k[MMA_KT][D + MMA_PAD];
  bf16_t v[MMA_KT][D + MMA_PAD];
};

// Four 8x8 bf16 matrices from shared memory, lane l giving row l % 8 of matrix l / 8; with
// .trans each is transposed (a thread gets rows 2t, 2t + 1 of column g).
// (The tensor-core kernels run from compute capability 8.0 on; below it these compile to zeros.)
__device__ __forceinline__ void ldsm_x4(u32 (&r)[4], const void* row) {
#if __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(shared_addr(row)));
#else
  r[0] = r[1] = r[2] = r[3] = 0u;
#endif
}
__device__ __forceinline__ void ldsm_x4_trans(u32 (&r)[4], const void* row) {
#if __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(shared_addr(row)));
#else
  r[0] = r[1] = r[2] = r[3] = 0u;
#endif
}

// Starts copying keys [k0, k0 + MMA_KT) of kv head `kvh` into `t` as one cp.async group; keys
// outside [klo, kend) become zeros (their probability is 0, and 0 x garbage could be NaN;
// blocks before a window's klo may be freed).
template <int D>
__device__ __forceinline__ void mma_issue_kv(MmaTile<D>& t, const bf16_t* k_cache, const bf16_t* v_cache,
                                             const u32* bt, int block_size, int kv_width, int kvh,
                                             int k0, int klo, int kend) {
  const int CH = D / 8;  // 16-byte chunks per key
  for (int e = threadIdx.x; e < MMA_KT * CH; e += blockDim.x) {
    const int j = e / CH, c = e % CH, kp = k0 + j;
    const bool in = kp >= klo && kp < kend;
    const u64 off = in ? kv_slot(bt, kp, block_size) * kv_width + kvh * D + c * 8 : 0;
    cp_async16(&t.k[j][c * 8], k_cache + off, in);
    cp_async16(&t.v[j][c * 8], v_cache + off, in);
  }
  cp_async_commit();
}

// 8 E4M3 codes times `scale` as 8 bf16 (a shared-memory row chunk).
__device__ __forceinline__ uint4 e4m3x8_to_bf16(uint2 w, float scale) {
  u32 o[4];
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const u32 word = i < 2 ? w.x : w.y, sh = 16 * (i & 1);
    o[i] = pack_bf16x2(e4m3_to_f((word >> sh) & 0xffu) * scale, e4m3_to_f((word >> (sh + 8)) & 0xffu) * scale);
  }
  return make_uint4(o[0], o[1], o[2], o[3]);
}

// mma_load_kv from an fp8 cache (codes and per-(slot, kv head) scales), converted to bf16.
template <int D>
__device__ __forceinline__ void mma_load_kv8(MmaTile<D>& t, const Kv8& c, const u32* bt, int block_size,
                                             int num_kv_heads, int kvh, int k0, int klo, int kend) {
  const int CH = D / 8;  // 8-element chunks per key
  for (int e = threadIdx.x; e < MMA_KT * CH; e += blockDim.x) {
    const int j = e / CH, ch = e % CH, kp = k0 + j;
    uint4 kv = make_uint4(0, 0, 0, 0), vv = kv;
    if (kp >= klo && kp < kend) {
      const u64 slot = kv_slot(bt, kp, block_size);
      const u64 off = slot * num_kv_heads * D + kvh * D + ch * 8;
      const u64 at = slot * num_kv_heads + kvh;
      kv = e4m3x8_to_bf16(*(const uint2*)(c.k + off), c.k_scale[at]);
      vv = e4m3x8_to_bf16(*(const uint2*)(c.v + off), c.v_scale[at]);
    }
    *(uint4*)&t.k[j][ch * 8] = kv;
    *(uint4*)&t.v[j][ch * 8] = vv;
  }
}

// Tensor-core prefill attention; with KV8 the cache is fp8 (`kv8`; k_cache / v_cache unused).
template <int D, bool KV8>
__device__ void attention_mma_impl(bf16_t* out, const bf16_t* q, const bf16_t* k_cache,
                                   const bf16_t* v_cache, const u32* work, const u32* q_start,
                                   const u32* q_len, const u32* ctx_len, const u32* block_tables,
                                   int bt_stride, int block_size, int num_heads, int num_kv_heads,
                                   int tile_q, float scale, const Kv8 kv8, int window,
                                   float softcap) {
  extern __shared__ __align__(16) unsigned char mma_smem[];
  MmaTile<D>* const tiles = (MmaTile<D>*)mma_smem;  // two: tile i in tiles[i % 2]
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
  // Tile i + 1 loads (cp.async; an fp8 cache converts through registers) while tile i is
  // computed.
  // With a window, keys before the first row's window (klo) are seen by no row, and their
  // blocks may already be freed (NO_BLOCK): they are not loaded.
  const int klo = window > 0 ? max(0, first_pos + 1 - window) : 0;
  auto issue = [&](MmaTile<D>& t, int k0) {
    if (KV8) mma_load_kv8<D>(t, kv8, bt, block_size, num_kv_heads, kvh, k0, klo, kend);
    else mma_issue_kv<D>(t, k_cache, v_cache, bt, block_size, kv_width, kvh, k0, klo, kend);
  };
  const int mi = lane >> 3, r8 = lane & 7;  // this lane's ldmatrix matrix and row
  // With a window, keys before the first row's window are seen by no row.
  const int first_tile = klo / MMA_KT;
  const int ntiles = (kend + MMA_KT - 1) / MMA_KT - first_tile;
  issue(tiles[0], first_tile * MMA_KT);
  for (int it = 0; it < ntiles; it++) {
    const int k0 = (first_tile + it) * MMA_KT;
    if (it + 1 < ntiles) {
      issue(tiles[(it + 1) & 1], k0 + MMA_KT);
      cp_async_wait_one();
    } else {
      cp_async_wait_all();
    }
    __syncthreads();  // tile it everywhere
    MmaTile<D>& tile = tiles[it & 1];
    float s[MMA_KT / 8][4];
#pragma unroll
    for (int nn = 0; nn < MMA_KT / 8; nn++)
#pragma unroll
      for (int e = 0; e < 4; e++) s[nn][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++)
#pragma unroll
      for (int nn = 0; nn < MMA_KT / 8; nn += 2) {
        u32 b[4];  // keys nn, nn + 1 (x 8), dims 16kk and 16kk + 8
        ldsm_x4(b, &tile.k[(nn + (mi >> 1)) * 8 + r8][16 * kk + 8 * (mi & 1)]);
        mma_bf16_16816(s[nn], qf[kk], b[0], b[1]);
        mma_bf16_16816(s[nn + 1], qf[kk], b[2], b[3]);
      }
    if (softcap > 0.f) {  // capped in natural units, kept in the dot's (times 1 / scale)
#pragma unroll
      for (int nn = 0; nn < MMA_KT / 8; nn++)
#pragma unroll
        for (int e = 0; e < 4; e++) s[nn][e] = soft_cap(s[nn][e] * scale, softcap, 1.f) / scale;
    }
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nn = 0; nn < MMA_KT / 8; nn++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int i = e >> 1, kp = k0 + nn * 8 + 2 * t + (e & 1);
        // causal (and past the context: kend > qpos), and within the window
        if (kp > qpos[i] || (window > 0 && kp <= qpos[i] - window)) s[nn][e] = -INFINITY;
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
#pragma unroll
      for (int nd = 0; nd < D / 8; nd += 2) {
        u32 b[4];  // keys 16kk and 16kk + 8 (x 8), dims nd, nd + 1 (x 8), transposed
        ldsm_x4_trans(b, &tile.v[16 * kk + 8 * (mi & 1) + r8][(nd + (mi >> 1)) * 8]);
        mma_bf16_16816(o[nd], pa, b[0], b[1]);
        mma_bf16_16816(o[nd + 1], pa, b[2], b[3]);
      }
    }
    __syncthreads();  // tile it's buffer is free for tile it + 2
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
      float scale, int window, float softcap) {                                                    \
    PDL_ENTRY();                                                                                   \
    const Kv8 none = {0, 0, 0, 0};                                                                 \
    attention_mma_impl<D, false>(out, q, k_cache, v_cache, work, q_start, q_len, ctx_len,          \
                                 block_tables, bt_stride, block_size, num_heads, num_kv_heads,     \
                                 tile_q, scale, none, window, softcap);                            \
  }                                                                                                \
  extern "C" __global__ void __launch_bounds__(128) attention_mma_kv8_##D##_bf16(                  \
      bf16_t* out, const bf16_t* q, u8* k8, u8* v8, float* k_scale, float* v_scale,                \
      const u32* work, const u32* q_start, const u32* q_len, const u32* ctx_len,                   \
      const u32* block_tables, int bt_stride, int block_size, int num_heads, int num_kv_heads,     \
      int head_dim, int tile_q, float scale, int window, float softcap) {                          \
    PDL_ENTRY();                                                                                   \
    const Kv8 kv8 = {k8, v8, k_scale, v_scale};                                                    \
    attention_mma_impl<D, true>(out, q, 0, 0, work, q_start, q_len, ctx_len, block_tables,         \
                                bt_stride, block_size, num_heads, num_kv_heads, tile_q, scale,     \
                                kv8, window, softcap);                                             \
  }
ATTENTION_MMA(64)
ATTENTION_MMA(128)

#define ATTENTION_KERNELS(T, S)                                                                    \
  extern "C" __global__ void attention_##S(                                                        \
      T* out, const T* q, const T* k_cache, const T* v_cache, const u32* work, const u32* q_start, \
      const u32* q_len, const u32* ctx_len, const u32* block_tables, int bt_stride,                \
      int block_size, int num_heads, int num_kv_heads, int head_dim, int tile_q, float scale,      \
      int window, float softcap) {                                                                 \
    PDL_ENTRY();                                                                                   \
    attention_impl<T>(out, q, k_cache, v_cache, work, q_start, q_len, ctx_len, block_tables,       \
                      bt_stride, block_size, num_heads, num_kv_heads, head_dim, tile_q, scale,     \
                      window, softcap);                                                            \
  }

ATTENTION_KERNELS(float, f32)
ATTENTION_KERNELS(bf16_t, bf16)
