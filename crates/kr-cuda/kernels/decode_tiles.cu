// kr-cuda tiled split decode attention (appended after decode_attention.cu by the loader, whose
// RoPE prologue, DecodeArgs, tile rows, shared addresses and split merges it uses), for head_dim 64 and 128 (a template
// parameter).
//
// The split-K scheme of attention_decode_split / _cluster with far fewer instructions on the
// critical path: at batch 1 those kernels are latency-bound, and the generic one ran about
// 1,950 instructions per warp (5,200 in its body, much of it guarded loops over the largest
// group and head size), stalling on instruction fetch, shared-memory round trips and
// shuffles. Here, per tile of DT_KT keys:
//   loads: keys and values are copied into shared memory with 16-byte cp.async, the first tile
//   before PDL_WAIT (the block tables are uploaded before the step, and the cache there holds
//   only earlier tokens, except the new token's slot, patched below), and DT_STAGES - 1 tiles
//   in flight while one is computed (DT_STAGES buffers, 2 or 3: the host's -DDT_STAGES);
//   scores and softmax: warp g is query head g and lane k is key k; each lane walks the head
//   dimension with 16-byte shared loads (rows padded by 16 bytes, so the 8 lanes of a load
//   phase hit distinct banks) and four independent sums; the online softmax state stays in
//   registers;
//   values: lane l accumulates dims [l * HD / 32, (l + 1) * HD / 32) of head g.
// The tile holding the new token's key gets it after PDL_WAIT: in the fused path from the
// registers of the threads that rotated it and wrote it to the cache, in the unfused one
// from the cache, which the kernel before wrote. Warps past the
// group only load. The splits merge as in decode_attention.cu (global or cluster).
#define DT_KT 32
#define DT_THREADS 256
#ifndef DT_STAGES
#define DT_STAGES 2  // tile buffers of the bf16 / f32 kernels and staged tiles of the fp8 one
#endif
#if DT_STAGES != 2 && DT_STAGES != 3
#error "DT_STAGES is 2 or 3"
#endif


// N consecutive elements of a shared row as floats (aligned to their size: 4, 8 or 16 bytes).
__device__ __forceinline__ void row_part(const float* p, float (&o)[4]) {
  const float4 v = *(const float4*)p;
  o[0] = v.x; o[1] = v.y; o[2] = v.z; o[3] = v.w;
}
__device__ __forceinline__ void row_part(const float* p, float (&o)[2]) {
  const float2 v = *(const float2*)p;
  o[0] = v.x; o[1] = v.y;
}
__device__ __forceinline__ void row_part(const bf16_t* p, float (&o)[4]) {
  const uint2 v = *(const uint2*)p;
  o[0] = __uint_as_float(v.x << 16); o[1] = __uint_as_float(v.x & 0xffff0000u);
  o[2] = __uint_as_float(v.y << 16); o[3] = __uint_as_float(v.y & 0xffff0000u);
}
__device__ __forceinline__ void row_part(const bf16_t* p, float (&o)[2]) {
  const u32 v = *(const u32*)p;
  o[0] = __uint_as_float(v << 16); o[1] = __uint_as_float(v & 0xffff0000u);
}

// Shared-memory geometry of a tile: rows of HD elements padded by 16 bytes; a buffer holds
// DT_KT key rows then DT_KT value rows.
template <typename T, int HD>
struct DecodeTiles {
  static constexpr int EPV = 16 / sizeof(T);  // elements per 16-byte vector
  static constexpr int ROW = HD + EPV;
  static constexpr int BUFFER = 2 * DT_KT * ROW;
};

// Starts copying the keys and values of a tile (cache rows in `rows`, nk keys; the rest
// zero) into `buf`, as one cp.async group.
template <typename T, int HD>
__device__ __forceinline__ void decode_tiles_issue(T* buf, const T* k_cache, const T* v_cache,
                                                   const u64* rows, int nk) {
  using G = DecodeTiles<T, HD>;
  constexpr int VPR = HD / G::EPV;  // vectors per row
  for (int i = threadIdx.x; i < 2 * DT_KT * VPR; i += DT_THREADS) {
    const int is_v = i / (DT_KT * VPR), key = (i / VPR) % DT_KT, vec = i % VPR;
    const T* src = (is_v ? v_cache : k_cache) + (key < nk ? rows[key] : 0) + vec * G::EPV;
    cp_async16(buf + (is_v * DT_KT + key) * G::ROW + vec * G::EPV, src, key < nk);
  }
  cp_async_commit();
}


// One tile for query head g (this warp; q = its row of sq): scores, the online softmax
// update of (m, l, acc), and the p-weighted values. ps is this warp's scratch of DT_KT floats.
// SCALED (the fp8 cache): key k's score is multiplied by ksc[k] and its value row enters the
// sum with weight p * vsc[k] (the softmax sum takes p alone).
template <typename T, int HD, bool SCALED = false>
__device__ __forceinline__ void decode_tiles_step(const float* q, const T* kt, const T* vt, int nk,
                                                  float& m, float& l, float (&acc)[HD / 32],
                                                  float* ps, float softcap,
                                                  const float* ksc = nullptr,
                                                  const float* vsc = nullptr) {
  using G = DecodeTiles<T, HD>;
  constexpr int DPL = HD / 32;
  const int lane = threadIdx.x & 31;
  const T* krow = kt + lane * G::ROW;
  float part[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int v = 0; v < HD / G::EPV; v++) {
    float kf[8];
    unpack16(*(const uint4*)(krow + v * G::EPV), kf, T());
#pragma unroll
    for (int e = 0; e < G::EPV; e += 4) {
      const float4 qv = *(const float4*)(q + v * G::EPV + e);
      part[0] += qv.x * kf[e];
      part[1] += qv.y * kf[e + 1];
      part[2] += qv.z * kf[e + 2];
      part[3] += qv.w * kf[e + 3];
    }
  }
  const float dot = (part[0] + part[1]) + (part[2] + part[3]);
  const float s = lane < nk ? soft_cap(SCALED ? dot * ksc[lane] : dot, softcap, LOG2E) : -INFINITY;
  const float m_new = fmaxf(m, warp_max(s));  // finite: nk >= 1
  const float p = exp2f(s - m_new);
  const float corr = exp2f(m - m_new);  // m = -inf before the first tile: 0
  l = l * corr + warp_sum(p);
  m = m_new;
  ps[lane] = SCALED ? p * vsc[lane] : p;
  __syncwarp();
#pragma unroll
  for (int j = 0; j < DPL; j++) acc[j] *= corr;
#pragma unroll 8
  for (int k = 0; k < DT_KT; k++) {
    float vf[DPL];
    row_part(vt + k * G::ROW + lane * DPL, vf);
    const float pk = ps[k];
#pragma unroll
    for (int j = 0; j < DPL; j++) acc[j] += pk * vf[j];
  }
  __syncwarp();  // ps is rewritten by the next tile
}

// Element threadIdx.x (< HD) of the new token's rotated key and its value into kval / vval,
// and into the cache slot: decode_write_new_kv one element per thread, the values kept in
// registers for the tile that holds the key. Fused path (rope.k_new) only.
template <typename T, int HD>
__device__ __forceinline__ void decode_tiles_new_kv(T& kval, T& vval, const T* k_cache, const T* v_cache,
                                                    const DecodeRope& r, int tok, int kvh,
                                                    u64 kv_width, const float* cs, const float* sn) {
  const int d = threadIdx.x;
  if (!r.k_new || d >= HD) return;
  const T* kh = (const T*)r.k_new + (u64)tok * kv_width + kvh * HD;
  kval = from_f<T>(roped(kh, d, HD / 2, r.interleaved, cs, sn));
  vval = ((const T*)r.v_new)[(u64)tok * kv_width + kvh * HD + d];
  const u32 slot = r.slots[tok];
  if (slot == NO_SLOT) return;
  ((T*)k_cache)[(u64)slot * kv_width + kvh * HD + d] = kval;
  ((T*)v_cache)[(u64)slot * kv_width + kvh * HD + d] = vval;
}

// The new token's key and value row into a tile's row `key`: from registers (fused path) or,
// when the kernel before wrote the slot, from the cache (`row`, visible after PDL_WAIT).
template <typename T, int HD>
__device__ __forceinline__ void decode_tiles_refresh(T* buf, int key, const DecodeRope& r, T kval,
                                                     T vval, const T* k_cache, const T* v_cache,
                                                     u64 row) {
  using G = DecodeTiles<T, HD>;
  const int d = threadIdx.x;
  if (d >= HD) return;
  buf[key * G::ROW + d] = r.k_new ? kval : k_cache[row + d];
  buf[(DT_KT + key) * G::ROW + d] = r.k_new ? vval : v_cache[row + d];
}

// The end of a tiled decode block's keys: warp g < group's running state (weighted values,
// max, sum) into shared memory for the merge, behind a barrier; no cp.async still in flight (a
// block without keys still has its zero-filling copies).
template <int HD>
__device__ __forceinline__ void decode_tiles_store_state(float (*part)[128], float* s_m, float* s_l,
                                                         const float (&acc)[HD / 32], float m, float l,
                                                         int group) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  cp_async_wait_all();
  if (warp < group) {
#pragma unroll
    for (int j = 0; j < HD / 32; j++) part[warp][lane * (HD / 32) + j] = acc[j];
    if (lane == 0) { s_m[warp] = m; s_l[warp] = l; }
  }
  __syncthreads();
}

template <typename T, int HD>
__device__ void attention_decode_tiles_impl(const DecodeArgs<T>& a, const DecodeRope& rope,
                                            float* partial, u32* counters, bool cluster) {
  using G = DecodeTiles<T, HD>;
  extern __shared__ __align__(16) unsigned char dt_smem[];
  T* const tiles = (T*)dt_smem;  // DT_STAGES buffers
  __shared__ __align__(16) float sq[DEC_MAX_GROUP][HD];
  __shared__ __align__(16) float ps[DEC_MAX_GROUP][DT_KT];
  __shared__ float part[DEC_MAX_GROUP][128], s_m[DEC_MAX_GROUP], s_l[DEC_MAX_GROUP];
  __shared__ u64 rows[DT_KT];
  __shared__ float cs[64], sn[64];
  const int seq = blockIdx.x, kvh = blockIdx.y, warp = threadIdx.x >> 5;
  const int group = a.num_heads / a.num_kv_heads, ctx = a.ctx_len[seq], tok = a.q_start[seq];
  const DecodeChunk chunk = decode_chunk(ctx, cluster ? 0 : a.min_keys, a.window);
  if ((int)blockIdx.z >= chunk.splits) return;  // no keys and not merged (never in a cluster)
  const int k_begin = chunk.begin, k_end = chunk.end;
  const u64 kv_width = (u64)a.num_kv_heads * HD;
  const u32* bt = a.block_tables + (u64)seq * a.bt_stride;
  rope_angles(cs, sn, rope, tok, HD / 2);
  // Tile i (keys k_begin + i * DT_KT ...) lands in buffer i % DT_STAGES; DT_STAGES - 1 are in
  // flight while one is computed.
  const int keys = k_end - k_begin, ntiles = (keys + DT_KT - 1) / DT_KT;
  auto issue = [&](int i) {
    decode_tile_rows(rows, bt, k_begin + i * DT_KT, min(DT_KT, keys - i * DT_KT), a.block_size, kv_width, kvh * HD);
    __syncthreads();  // the rows
    decode_tiles_issue<T, HD>(tiles + (i % DT_STAGES) * G::BUFFER, a.k_cache, a.v_cache, rows,
                              min(DT_KT, keys - i * DT_KT));
  };
  issue(0);  // even without keys: the merge below waits for its (zero-filling) group
  for (int i = 1; i < min(ntiles, DT_STAGES - 1); i++) {
    __syncthreads();  // the rows are read
    issue(i);
  }
  PDL_ENTRY();
  const int new_key = ctx - 1;
  const bool reads_new_key = ctx > 0 && k_begin <= new_key && new_key < k_end;
  // q before the new key: its loads then need not wait behind the key's cache stores (which
  // may alias them as far as the compiler knows), so both reads overlap.
  for (int e = threadIdx.x; e < group * HD; e += DT_THREADS) {
    const int g = e / HD, d = e % HD;
    sq[g][d] = decode_q(a.q, rope, tok, a.num_heads * HD, kvh * group + g, d, HD, cs, sn, a.scale) * LOG2E;
  }
  T kval = from_f<T>(0.f), vval = from_f<T>(0.f);
  if (reads_new_key) decode_tiles_new_kv<T, HD>(kval, vval, a.k_cache, a.v_cache, rope, tok, kvh, kv_width, cs, sn);
  float m = -INFINITY, l = 0.f, acc[HD / 32];
#pragma unroll
  for (int j = 0; j < HD / 32; j++) acc[j] = 0.f;
  for (int i = 0; i < ntiles; i++) {
    const int t0 = k_begin + i * DT_KT, nk = min(DT_KT, k_end - t0);
    T* const buf = tiles + (i % DT_STAGES) * G::BUFFER;
    if (DT_STAGES > 2 && i + 1 < ntiles) cp_async_wait_one();  // tile i landed; i + 1 may fly on
    else cp_async_wait_all();
    __syncthreads();  // tile i everywhere, sq, the new slot; tile i - 1 is done with
    if (reads_new_key && t0 <= new_key && new_key < t0 + DT_KT) {  // block-uniform
      const u64 row = kv_slot(bt, new_key, a.block_size) * kv_width + kvh * HD;
      decode_tiles_refresh<T, HD>(buf, new_key - t0, rope, kval, vval, a.k_cache, a.v_cache, row);
      __syncthreads();
    }
    if (i + DT_STAGES - 1 < ntiles) issue(i + DT_STAGES - 1);  // into tile i - 1's buffer
    if (warp < group)
      decode_tiles_step<T, HD>(sq[warp], buf, buf + DT_KT * G::ROW, nk, m, l, acc, ps[warp], a.softcap);
  }
  decode_tiles_store_state<HD>(part, s_m, s_l, acc, m, l, group);
  const DecodeState st = {part, s_m, s_l};
  if (cluster) decode_merge_cluster(st, a, kvh, tok, group);
  else decode_merge_global(st, a, seq, kvh, tok, group, partial, counters, chunk.splits);
}

// attention_decode_tiles<HD>_<S> (global merge) and attention_decode_tiles_cluster<HD>_<S>,
// with the arguments of attention_decode_split (head_dim must equal HD).
#define DECODE_TILES_KERNELS(T, S, HD)                                                             \
  extern "C" __global__ void __launch_bounds__(DT_THREADS)                                         \
      attention_decode_tiles##HD##_##S(DECODE_PARAMS(T)) {                                         \
    DECODE_UNPACK(T);                                                                              \
    attention_decode_tiles_impl<T, HD>(a, rope, partial, counters, false);                         \
  }                                                                                                \
  extern "C" __global__ void __launch_bounds__(DT_THREADS)                                         \
      attention_decode_tiles_cluster##HD##_##S(DECODE_PARAMS(T)) {                                 \
    DECODE_UNPACK(T);                                                                              \
    attention_decode_tiles_impl<T, HD>(a, rope, partial, counters, true);                          \
  }

DECODE_TILES_KERNELS(float, f32, 64)
DECODE_TILES_KERNELS(float, f32, 128)
DECODE_TILES_KERNELS(bf16_t, bf16, 64)
DECODE_TILES_KERNELS(bf16_t, bf16, 128)

// ---- The tiled decode kernel over an fp8 cache (E4M3 codes, one scale per (slot, kv head)) ----
// As attention_decode_tiles_impl on the unfused path only (rope_write_kv wrote the step's keys
// and values before), with one more stage: cp.async brings a tile's code rows (HD bytes) and
// scales into a staging buffer; it is then widened into a bf16 tile whose values are the codes
// times 2^-120 exactly (e4m3x2_to_bf16x2_scaled: bit moves, no rounding), with scales times 2^60,
// and the bf16 step (decode_tiles_step<.., SCALED>) runs on it with queries times 2^60. So the
// codes are decoded once per block rather than once per query head, and every product stays a
// normal f32 (codes >= 2^-129, queries and scales times 2^60). The accumulated values carry
// 2^-60, removed before the merge. The warps past the group widen tile t + 1 while the group
// computes tile t (with a group of 8, the same warps after computing), and the next
// DT_STAGES - 1 are in flight. The new key's tile
// takes its row and scales from the cache, written by the kernel before (read after
// PDL_WAIT). The splits merge through global memory (decode_merge_global), one or many.
template <int HD>
struct DecodeTiles8 {
  static constexpr int ROW = HD + 16;             // bytes per staged row, padded by 16
  static constexpr int BUFFER = 2 * DT_KT * ROW;  // key rows then value rows
  // Dynamic shared memory: two bf16 tiles and their scales, DT_STAGES staged tiles and theirs.
  static constexpr int SMEM = 2 * DecodeTiles<bf16_t, HD>::BUFFER * 2 + DT_STAGES * BUFFER + (2 + DT_STAGES) * (2 * DT_KT * 4);
};

// 4 bytes global -> shared without a register round trip; zeros when !full.
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem, bool full) {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(shared_addr(smem)), "l"(gmem), "r"(full ? 4 : 0) : "memory");
#else
  *(u32*)smem = full ? *(const u32*)gmem : 0u;
#endif
}

// Code rows (byte offsets) and scale indices of keys t0 .. t0 + nk, by threads < nk.
__device__ __forceinline__ void decode_tile_rows8(u64* rows, u64* srows, const u32* bt, int t0, int nk,
                                                  int block_size, int num_kv_heads, int kvh, int hd) {
  if ((int)threadIdx.x < nk) {
    const u64 slot = kv_slot(bt, t0 + threadIdx.x, block_size);
    rows[threadIdx.x] = slot * num_kv_heads * hd + (u64)kvh * hd;
    srows[threadIdx.x] = slot * num_kv_heads + kvh;
  }
}

// Starts copying a tile's code rows into `buf` and its scales into `sc` (k then v, DT_KT each),
// as one cp.async group; keys at or past nk read zeros.
template <int HD>
__device__ __forceinline__ void decode_tiles8_issue(u8* buf, float* sc, const Kv8& c, const u64* rows,
                                                    const u64* srows, int nk) {
  using G = DecodeTiles8<HD>;
  constexpr int VPR = HD / 16;
  for (int i = threadIdx.x; i < 2 * DT_KT * VPR; i += DT_THREADS) {
    const int is_v = i / (DT_KT * VPR), key = (i / VPR) % DT_KT, vec = i % VPR;
    const u8* src = (is_v ? c.v : c.k) + (key < nk ? rows[key] : 0) + vec * 16;
    cp_async16(buf + (is_v * DT_KT + key) * G::ROW + vec * 16, src, key < nk);
  }
  for (int i = threadIdx.x; i < 2 * DT_KT; i += DT_THREADS) {
    const int is_v = i / DT_KT, key = i % DT_KT;
    cp_async4(sc + i, (is_v ? c.v_scale : c.k_scale) + (key < nk ? srows[key] : 0), key < nk);
  }
  cp_async_commit();
}

// Where a block finds the new token's key: its index in a tile (or -1) and its cache rows.
struct NewKey8 {
  int key;
  u64 row, srow;
};

// Widens the staged tile (codes `st`, scales `ss`) into `wt` (bf16, codes times 2^-120) and
// `ws` (scales times 2^60), by thread `tid` of `n`. Key nk.key, when >= 0, comes from the cache.
template <int HD>
__device__ __forceinline__ void decode_tiles8_widen(bf16_t* wt, float* ws, const u8* st, const float* ss,
                                                    int tid, int n, const NewKey8& nk, const Kv8& c) {
  using W = DecodeTiles<bf16_t, HD>;
  using S = DecodeTiles8<HD>;
  constexpr int VPR = HD / 16;
  for (int i = tid; i < 2 * DT_KT * VPR; i += n) {
    const int r = i / VPR, vec = i % VPR;  // rows: DT_KT keys, then DT_KT values
    const bool is_v = r >= DT_KT, fresh = r - (is_v ? DT_KT : 0) == nk.key;
    const uint4 w = fresh ? *(const uint4*)((is_v ? c.v : c.k) + nk.row + vec * 16)
                          : *(const uint4*)(st + r * S::ROW + vec * 16);
    bf16_t* d = wt + r * W::ROW + vec * 16;
    *(uint4*)d = make_uint4(e4m3x2_to_bf16x2_scaled(w.x, 0), e4m3x2_to_bf16x2_scaled(w.x, 1),
                            e4m3x2_to_bf16x2_scaled(w.y, 0), e4m3x2_to_bf16x2_scaled(w.y, 1));
    *(uint4*)(d + 8) = make_uint4(e4m3x2_to_bf16x2_scaled(w.z, 0), e4m3x2_to_bf16x2_scaled(w.z, 1),
                                  e4m3x2_to_bf16x2_scaled(w.w, 0), e4m3x2_to_bf16x2_scaled(w.w, 1));
  }
  for (int i = tid; i < 2 * DT_KT; i += n) {
    const bool is_v = i >= DT_KT, fresh = i - (is_v ? DT_KT : 0) == nk.key;
    ws[i] = (fresh ? (is_v ? c.v_scale : c.k_scale)[nk.srow] : ss[i]) * 0x1p60f;
  }
}

template <int HD>
__device__ void attention_decode_tiles8_impl(const DecodeArgs<bf16_t>& a, const Kv8 c, float* partial,
                                             u32* counters) {
  using W = DecodeTiles<bf16_t, HD>;
  using S = DecodeTiles8<HD>;
  extern __shared__ __align__(16) unsigned char dt_smem[];
  bf16_t* const wide = (bf16_t*)dt_smem;                    // two bf16 tiles
  float* const wide_sc = (float*)(wide + 2 * W::BUFFER);   // their scales, 2 * DT_KT each
  u8* const stage = (u8*)(wide_sc + 4 * DT_KT);            // DT_STAGES staged tiles
  float* const stage_sc = (float*)(stage + DT_STAGES * S::BUFFER);  // their scales
  __shared__ __align__(16) float sq[DEC_MAX_GROUP][HD];
  __shared__ __align__(16) float ps[DEC_MAX_GROUP][DT_KT];
  __shared__ float part[DEC_MAX_GROUP][128], s_m[DEC_MAX_GROUP], s_l[DEC_MAX_GROUP];
  __shared__ u64 rows[DT_KT], srows[DT_KT];
  const int seq = blockIdx.x, kvh = blockIdx.y, warp = threadIdx.x >> 5;
  const int group = a.num_heads / a.num_kv_heads, ctx = a.ctx_len[seq], tok = a.q_start[seq];
  const DecodeChunk chunk = decode_chunk(ctx, a.min_keys, a.window);
  if ((int)blockIdx.z >= chunk.splits) return;  // no keys and not merged
  const int k_begin = chunk.begin, keys = chunk.end - chunk.begin, nkvh = a.num_kv_heads;
  const int tiles = (keys + DT_KT - 1) / DT_KT;
  const u32* bt = a.block_tables + (u64)seq * a.bt_stride;
  NewKey8 fresh = {-1, 0, 0};  // the new key (ctx - 1), in this block's tile fresh.key / DT_KT
  if (ctx > 0 && k_begin <= ctx - 1 && ctx - 1 < chunk.end) {
    const u64 slot = kv_slot(bt, ctx - 1, a.block_size);
    fresh = {ctx - 1 - k_begin, slot * nkvh * HD + (u64)kvh * HD, slot * nkvh + kvh};
  }
  auto tile_keys = [&](int t) { return min(DT_KT, keys - t * DT_KT); };
  auto tile_fresh = [&](int t) {
    NewKey8 f = fresh;
    f.key = f.key >= t * DT_KT && f.key < (t + 1) * DT_KT ? f.key - t * DT_KT : -1;
    return f;
  };
  // Tile i is staged in buffer i % DT_STAGES and widened into wide buffer i % 2; while tile i
  // is computed, i + 1 is widened and i + 2 .. i + DT_STAGES are in flight.
  auto issue = [&](int i) {
    decode_tile_rows8(rows, srows, bt, k_begin + i * DT_KT, tile_keys(i), a.block_size, nkvh, kvh, HD);
    __syncthreads();  // the rows
    const int st = i % DT_STAGES;
    decode_tiles8_issue<HD>(stage + st * S::BUFFER, stage_sc + st * 2 * DT_KT, c, rows, srows, tile_keys(i));
  };
  issue(0);  // even without keys: the merge waits for its (zero-filling) group
  for (int i = 1; i < min(tiles, DT_STAGES); i++) {
    __syncthreads();  // the rows are read
    issue(i);
  }
  PDL_ENTRY();
  for (int e = threadIdx.x; e < group * HD; e += DT_THREADS) {
    const int g = e / HD, d = e % HD;
    sq[g][d] = to_f(a.q[(u64)tok * a.num_heads * HD + (kvh * group + g) * HD + d]) * (a.scale * LOG2E * 0x1p60f);
  }
  cp_async_wait_all();
  __syncthreads();  // the first tiles staged, sq
  decode_tiles8_widen<HD>(wide, wide_sc, stage, stage_sc, threadIdx.x, DT_THREADS, tile_fresh(0), c);
  float m = -INFINITY, l = 0.f, acc[HD / 32];
#pragma unroll
  for (int j = 0; j < HD / 32; j++) acc[j] = 0.f;
  const int wideners = group < DT_THREADS / 32 ? group * 32 : 0;  // first widening thread
  for (int t = 0; t < tiles; t++) {
    const int b = t & 1, next = (t + 1) % DT_STAGES;
    if (DT_STAGES > 2 && t + 2 < tiles && t >= 1) cp_async_wait_one();  // t + 1 staged; t + 2 may fly on
    else cp_async_wait_all();
    __syncthreads();  // tile t widened, t + 1 staged; tile t - 1's buffers done with
    if (t + DT_STAGES < tiles) issue(t + DT_STAGES);  // into tile t's staging buffer
    const bf16_t* kt = wide + b * W::BUFFER;
    const float* sc = wide_sc + b * 2 * DT_KT;
    if (warp < group)
      decode_tiles_step<bf16_t, HD, true>(sq[warp], kt, kt + DT_KT * W::ROW, tile_keys(t), m, l, acc,
                                          ps[warp], a.softcap, sc, sc + DT_KT);
    if (t + 1 < tiles && (int)threadIdx.x >= wideners)
      decode_tiles8_widen<HD>(wide + (b ^ 1) * W::BUFFER, wide_sc + (b ^ 1) * 2 * DT_KT, stage + next * S::BUFFER,
                              stage_sc + next * 2 * DT_KT, threadIdx.x - wideners, DT_THREADS - wideners,
                              tile_fresh(t + 1), c);
  }
#pragma unroll
  for (int j = 0; j < HD / 32; j++) acc[j] *= 0x1p60f;
  decode_tiles_store_state<HD>(part, s_m, s_l, acc, m, l, group);
  const DecodeState st = {part, s_m, s_l};
  decode_merge_global(st, a, seq, kvh, tok, group, partial, counters, chunk.splits);
}

// attention_decode_tiles_kv8_<HD>_bf16: the fp8-cache decode kernel (bf16 compute).
#define DECODE_TILES8_KERNEL(HD)                                                                   \
  extern "C" __global__ void __launch_bounds__(DT_THREADS) attention_decode_tiles_kv8_##HD##_bf16( \
      bf16_t* out, const bf16_t* q, u8* k8, u8* v8, float* k_scale, float* v_scale,                \
      const u32* q_start, const u32* ctx_len, const u32* block_tables, int bt_stride,              \
      int block_size, int num_heads, int num_kv_heads, int head_dim, float scale, float* partial,  \
      u32* counters, int min_keys, int window, float softcap) {                                    \
    const DecodeArgs<bf16_t> a = {out,       q,        0,          0,         q_start,             \
                                  ctx_len,   block_tables, bt_stride, block_size, num_heads,       \
                                  num_kv_heads, head_dim, scale, min_keys, window, softcap};       \
    const Kv8 c = {k8, v8, k_scale, v_scale};                                                      \
    attention_decode_tiles8_impl<HD>(a, c, partial, counters);                                     \
  }
DECODE_TILES8_KERNEL(64)
DECODE_TILES8_KERNEL(128)
