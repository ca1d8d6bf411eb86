// ---- Weight-streaming GEMV for 2..8 tokens on tensor cores (bf16, sm_80 and newer) ----
// The CUDA-core GEMV re-reads and unpacks every token's activations for each weight vector,
// which made an 8-token decode step cost four times a 1-token step. Here one
// mma.sync.m16n8k16 multiplies 16 weight rows (A) by the step's tokens (B, n = 8: token g of
// lane g * 4 + t, tokens past `nt` are zeros), so each weight is read once and unpacked by no
// one. A block owns one tile of 16 weight rows; its GM_WARPS warps split the columns (each a
// contiguous run of 32-column blocks, so that enough loads are in flight even for matrices of
// few rows) and add their partial tiles through shared memory.
//
// The k order inside a 32-column block is permuted so that every lane does one 16-byte load
// per row: lane (g = lane / 4, t = lane % 4) loads columns 8t..8t+7 of rows g and g + 8 and
// of token g's activations. Its elements 0,1 / 2,3 feed the first mma as the fragments of
// logical k 2t, 2t+1 / 2t+8, 2t+9 (A: a0/a1 rows g/g+8, a2/a3; B: b0, b1), elements 4..7 the
// second mma. A and B see the same permutation, so the dot products are unchanged.
// The accumulators of a warp: c0, c1 = row g, tokens 2t, 2t+1; c2, c3 = row g+8, same tokens.
// Both tunable at compile time for comparison runs (KR_CUDA_MMA_WARPS, KR_CUDA_MMA_UNROLL; the
// measured alternatives are listed in backend/gemv_mma.rs).
#ifndef GM_WARPS
#define GM_WARPS 16
#endif
#ifndef GM_UNROLL
#define GM_UNROLL 4
#endif

__device__ __forceinline__ void gm_mma2(float* c, uint4 a_lo, uint4 a_hi, uint4 x) {
  const u32 a1[4] = {a_lo.x, a_hi.x, a_lo.y, a_hi.y};
  mma_bf16_16816(c, a1, x.x, x.y);
  const u32 a2[4] = {a_lo.z, a_hi.z, a_lo.w, a_hi.w};
  mma_bf16_16816(c, a2, x.z, x.w);
}

// c += W[r0 .. r0 + 16, this warp's columns] · X[0 .. nt, same columns]ᵀ (cols a multiple of
// 32; the warp's run of 32-column blocks is [b0, b1)).
__device__ __forceinline__ void gm_tile(float* c, const bf16_t* w, const bf16_t* x, int cols,
                                        int r0, int nt) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3, warp = threadIdx.x >> 5;
  const int blocks = cols / 32, per = (blocks + GM_WARPS - 1) / GM_WARPS;
  const int b0 = min(blocks, warp * per), b1 = min(blocks, b0 + per);
  const uint4* wlo = (const uint4*)(w + (u64)(r0 + g) * cols) + t;
  const uint4* whi = (const uint4*)(w + (u64)(r0 + g + 8) * cols) + t;
  const uint4* xr = (const uint4*)(x + (u64)min(g, nt - 1) * cols) + t;
  const bool token = g < nt;
  const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
  int b = b0;
  for (; b + GM_UNROLL <= b1; b += GM_UNROLL) {
    uint4 lo[GM_UNROLL], hi[GM_UNROLL], xv[GM_UNROLL];
#pragma unroll
    for (int u = 0; u < GM_UNROLL; u++) {
      lo[u] = __ldcs(wlo + 4 * (b + u));
      hi[u] = __ldcs(whi + 4 * (b + u));
    }
#pragma unroll
    for (int u = 0; u < GM_UNROLL; u++) xv[u] = token ? __ldg(xr + 4 * (b + u)) : zero;
#pragma unroll
    for (int u = 0; u < GM_UNROLL; u++) gm_mma2(c, lo[u], hi[u], xv[u]);
  }
  for (; b < b1; b++) {
    const uint4 lo = __ldcs(wlo + 4 * b), hi = __ldcs(whi + 4 * b);
    gm_mma2(c, lo, hi, token ? __ldg(xr + 4 * b) : zero);
  }
}

// Adds every warp's N accumulators per lane into warp 0's `c` (the other warps' `c` is left
// as it was). All threads of the block must call it.
template <int N>
__device__ __forceinline__ void gm_reduce(float* c) {
  __shared__ float part[GM_WARPS][N][32];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
  for (int i = 0; i < N; i++) part[warp][i][lane] = c[i];
  __syncthreads();
  if (warp != 0) return;
#pragma unroll
  for (int i = 0; i < N; i++) {
    float s = 0.f;
#pragma unroll
    for (int w = 0; w < GM_WARPS; w++) s += part[w][i][lane];
    c[i] = s;
  }
}

// Warp 0 stores the tile of y[token, row] (+ bias[row]; + y where `accumulate`: the residual
// add of the o/down projections); rows of y are `rows` wide.
__device__ __forceinline__ void gm_store(bf16_t* y, const float* c, const float* bias, int rows,
                                         int r0, int nt, int accumulate) {
  if (threadIdx.x >= 32) return;
  const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const int row = r0 + g + 8 * (i >> 1), tok = 2 * t + (i & 1);
    if (tok >= nt) continue;
    const u64 at = (u64)tok * rows + row;
    const float v = c[i] + (bias ? bias[row] : 0.f);
    y[at] = from_f<bf16_t>(accumulate ? v + to_f(y[at]) : v);
  }
}

// Grid: rows / 16 blocks of 32 * GM_WARPS threads (rows a multiple of 16).
extern "C" __global__ void __launch_bounds__(32 * GM_WARPS)
    gemv_mma_bf16(bf16_t* y, const bf16_t* x, const bf16_t* w, const float* bias, int rows,
                  int cols, int nt, int accumulate) {
  PDL_ENTRY();
  const int r0 = 16 * blockIdx.x;
  float c[4] = {0.f, 0.f, 0.f, 0.f};
  gm_tile(c, w, x, cols, r0, nt);
  gm_reduce<4>(c);
  gm_store(y, c, bias, rows, r0, nt, accumulate);
}

// q | k | v in one launch: row tiles [0, nq) take wq, then wk, then wv (each a multiple of 16).
extern "C" __global__ void __launch_bounds__(32 * GM_WARPS)
    gemv_mma_qkv_bf16(bf16_t* yq, bf16_t* yk, bf16_t* yv, const bf16_t* x, const bf16_t* wq,
                      const bf16_t* wk, const bf16_t* wv, const float* bq, const float* bk,
                      const float* bv, int nq, int nk, int nv, int cols, int nt) {
  PDL_ENTRY();
  int r0 = 16 * blockIdx.x;
  bf16_t* y = yq;
  const bf16_t* w = wq;
  const float* bias = bq;
  int rows = nq;
  if (r0 >= nq) {
    r0 -= nq; y = yk; w = wk; bias = bk; rows = nk;
    if (r0 >= nk) { r0 -= nk; y = yv; w = wv; bias = bv; rows = nv; }
  }
  float c[4] = {0.f, 0.f, 0.f, 0.f};
  gm_tile(c, w, x, cols, r0, nt);
  gm_reduce<4>(c);
  gm_store(y, c, bias, rows, r0, nt, 0);
}

// y = silu(x·Wg) ⊙ (x·Wu): the block runs the same row tile of both matrices, so gate and up of
// each (row, token) meet in the same lane of warp 0.
extern "C" __global__ void __launch_bounds__(32 * GM_WARPS)
    gemv_mma_gate_up_bf16(bf16_t* y, const bf16_t* x, const bf16_t* wg, const bf16_t* wu,
                          int rows, int cols, int nt) {
  PDL_ENTRY();
  const int r0 = 16 * blockIdx.x;
  float c[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  gm_tile(c, wg, x, cols, r0, nt);
  gm_tile(c + 4, wu, x, cols, r0, nt);
  gm_reduce<8>(c);
  float act[4];
#pragma unroll
  for (int i = 0; i < 4; i++) act[i] = c[i] / (1.f + expf(-c[i])) * c[4 + i];
  gm_store(y, act, nullptr, rows, r0, nt, 0);
}
