// ---- Quantised weights: GGUF block types read as the file stores them ----
// A weight row is `cols / elems` blocks of `bytes` bytes (QT<Q>, Q the GGML type id). Every type
// is read in units of 32 consecutive elements: `qdecode32<Q>(block, s, v)` gives elements
// 32s .. 32s + 31 of a block, scales applied (the layouts are those of ggml-quants.c; the CPU's
// kr-model/src/quant decoders, checked against gguf-py, spell out the same element order).
// Rows start 256-byte aligned in the weight arena; inside a row a block is only as aligned as
// its size allows (2 bytes for Q4_0, Q5_0, Q8_0, IQ4_NL, Q3_K and Q6_K), so those types read
// 16-bit halves.
typedef unsigned short u16;

template <int Q> struct QT;
template <> struct QT<2> { static constexpr int bytes = 18, elems = 32; };    // Q4_0
template <> struct QT<3> { static constexpr int bytes = 20, elems = 32; };    // Q4_1
template <> struct QT<6> { static constexpr int bytes = 22, elems = 32; };    // Q5_0
template <> struct QT<7> { static constexpr int bytes = 24, elems = 32; };    // Q5_1
template <> struct QT<8> { static constexpr int bytes = 34, elems = 32; };    // Q8_0
template <> struct QT<10> { static constexpr int bytes = 84, elems = 256; };  // Q2_K
template <> struct QT<11> { static constexpr int bytes = 110, elems = 256; }; // Q3_K
template <> struct QT<12> { static constexpr int bytes = 144, elems = 256; }; // Q4_K
template <> struct QT<13> { static constexpr int bytes = 176, elems = 256; }; // Q5_K
template <> struct QT<14> { static constexpr int bytes = 210, elems = 256; }; // Q6_K
template <> struct QT<20> { static constexpr int bytes = 18, elems = 32; };   // IQ4_NL
template <> struct QT<23> { static constexpr int bytes = 136, elems = 256; }; // IQ4_XS

__device__ __forceinline__ float h2f(u16 h) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}
__device__ __forceinline__ float f16_at(const u8* p) { return h2f(__ldg((const u16*)p)); }
__device__ __forceinline__ u32 ld_a2(const u8* p) {
  const u16* h = (const u16*)p;
  return (u32)__ldg(h) | ((u32)__ldg(h + 1) << 16);
}
__device__ __forceinline__ u32 ld_a4(const u8* p) { return __ldg((const u32*)p); }
// 32 bits at p, 4-byte aligned when A is 4, else 2-byte aligned.
template <int A> __device__ __forceinline__ u32 ld_word(const u8* p) {
  return A >= 4 ? ld_a4(p) : ld_a2(p);
}

// The IQ4 code book (kr-model's IQ4_VALUES) as signed bytes, chosen with byte permutes so that
// lanes indexing different entries do not serialise on a table in memory.
__device__ __forceinline__ float iq4_value(u32 n) {
  const u32 lo = __byte_perm(0xbfad9881u /* -127 -104 -83 -65 */, 0xf6eaddcfu /* -49 -35 -22 -10 */, n & 7);
  const u32 hi = __byte_perm(0x26190d01u /* 1 13 25 38 */, 0x71594535u /* 53 69 89 113 */, n & 7);
  return (float)(signed char)((n & 8 ? hi : lo) & 0xffu);
}

// 16 bytes of nibbles at p: element i (< 16) is the low nibble of byte i, element 16 + i the
// high nibble; v = q * d + m.
template <int A>
__device__ __forceinline__ void nibbles32(const u8* p, float d, float m, float* v) {
#pragma unroll
  for (int k = 0; k < 4; k++) {
    const u32 w = ld_word<A>(p + 4 * k);
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const u32 b = (w >> (8 * j)) & 0xffu;
      v[4 * k + j] = fmaf((float)(b & 15u), d, m);
      v[16 + 4 * k + j] = fmaf((float)(b >> 4), d, m);
    }
  }
}

// As nibbles32 with a fifth bit per element (bit i of qh): v = q * d + m.
template <int A>
__device__ __forceinline__ void five_bits32(const u8* p, u32 qh, float d, float m, float* v) {
#pragma unroll
  for (int k = 0; k < 4; k++) {
    const u32 w = ld_word<A>(p + 4 * k);
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const int i = 4 * k + j;
      const u32 b = (w >> (8 * j)) & 0xffu;
      v[i] = fmaf((float)((b & 15u) | (((qh >> i) & 1u) << 4)), d, m);
      v[16 + i] = fmaf((float)((b >> 4) | (((qh >> (16 + i)) & 1u) << 4)), d, m);
    }
  }
}

// The 6-bit scale and min of sub-block j of a Q4_K / Q5_K block's 12 scale bytes.
__device__ __forceinline__ void scale_min_k4(const u8* sc, int j, float* s, float* m) {
  if (j < 4) {
    *s = (float)(__ldg(sc + j) & 63);
    *m = (float)(__ldg(sc + j + 4) & 63);
  } else {
    const u32 a = __ldg(sc + j + 4), lo = __ldg(sc + j - 4), hi = __ldg(sc + j);
    *s = (float)((a & 15u) | ((lo >> 6) << 4));
    *m = (float)((a >> 4) | ((hi >> 6) << 4));
  }
}

template <int Q> __device__ __forceinline__ void qdecode32(const u8* b, int s, float* v);

template <> __device__ __forceinline__ void qdecode32<2>(const u8* b, int, float* v) {
  const float d = f16_at(b);
  nibbles32<2>(b + 2, d, -8.f * d, v);
}
template <> __device__ __forceinline__ void qdecode32<3>(const u8* b, int, float* v) {
  nibbles32<4>(b + 4, f16_at(b), f16_at(b + 2), v);
}
template <> __device__ __forceinline__ void qdecode32<6>(const u8* b, int, float* v) {
  const float d = f16_at(b);
  five_bits32<2>(b + 6, ld_a2(b + 2), d, -16.f * d, v);
}
template <> __device__ __forceinline__ void qdecode32<7>(const u8* b, int, float* v) {
  five_bits32<4>(b + 8, ld_a4(b + 4), f16_at(b), f16_at(b + 2), v);
}
template <> __device__ __forceinline__ void qdecode32<8>(const u8* b, int, float* v) {
  const float d = f16_at(b);
#pragma unroll
  for (int k = 0; k < 8; k++) {
    const u32 w = ld_a2(b + 2 + 4 * k);
#pragma unroll
    for (int j = 0; j < 4; j++) v[4 * k + j] = (float)(signed char)((w >> (8 * j)) & 0xffu) * d;
  }
}
template <> __device__ __forceinline__ void qdecode32<20>(const u8* b, int, float* v) {
  const float d = f16_at(b);
#pragma unroll
  for (int k = 0; k < 4; k++) {
    const u32 w = ld_a2(b + 2 + 4 * k);
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const u32 q = (w >> (8 * j)) & 0xffu;
      v[4 * k + j] = iq4_value(q & 15u) * d;
      v[16 + 4 * k + j] = iq4_value(q >> 4) * d;
    }
  }
}
// Q2_K: scales[16] (scale | min << 4), qs[64], d, dmin; element 32s + i is bits 2(s%4).. of
// qs[32(s/4) + i], its sub-block of 16 is 2s + i/16.
template <> __device__ __forceinline__ void qdecode32<10>(const u8* b, int s, float* v) {
  const float d = f16_at(b + 80), dmin = f16_at(b + 82);
  const u8* qs = b + 16 + 32 * (s >> 2);
  const int sh = 2 * (s & 3);
#pragma unroll
  for (int half = 0; half < 2; half++) {
    const u32 sc = __ldg(b + 2 * s + half);
    const float dl = d * (float)(sc & 15u), ml = dmin * (float)(sc >> 4);
#pragma unroll
    for (int k = 0; k < 4; k++) {
      const u32 w = ld_a4(qs + 16 * half + 4 * k);
#pragma unroll
      for (int j = 0; j < 4; j++) v[16 * half + 4 * k + j] = dl * (float)((w >> (8 * j + sh)) & 3u) - ml;
    }
  }
}
// Q3_K: hmask[32], qs[64], scales[12], d; element 32s + i takes bits 2(s%4).. of qs[32(s/4) + i]
// and bit s of hmask[i] (clear: minus 4); sub-block 2s + i/16 has a signed 6-bit scale.
__device__ __forceinline__ float q3_k_scale(const u8* sc, int i) {
  const u32 lo = (__ldg(sc + (i & 7)) >> (4 * (i >> 3))) & 15u;
  const u32 hi = (__ldg(sc + 8 + (i & 3)) >> (2 * (i >> 2))) & 3u;
  return (float)((int)(lo | (hi << 4)) - 32);
}
template <> __device__ __forceinline__ void qdecode32<11>(const u8* b, int s, float* v) {
  const float d = f16_at(b + 108);
  const u8* qs = b + 32 + 32 * (s >> 2);
  const int sh = 2 * (s & 3);
#pragma unroll
  for (int half = 0; half < 2; half++) {
    const float dl = d * q3_k_scale(b + 96, 2 * s + half);
#pragma unroll
    for (int k = 0; k < 4; k++) {
      const int i0 = 16 * half + 4 * k;
      const u32 w = ld_a2(qs + i0), h = ld_a2(b + i0);
#pragma unroll
      for (int j = 0; j < 4; j++) {
        const int q = (int)((w >> (8 * j + sh)) & 3u) - (((h >> (8 * j + s)) & 1u) ? 0 : 4);
        v[i0 + j] = dl * (float)q;
      }
    }
  }
}
// Q4_K: d, dmin, scales[12], qs[128]; element 32s + i is nibble s%2 of qs[32(s/2) + i].
template <> __device__ __forceinline__ void qdecode32<12>(const u8* b, int s, float* v) {
  float sc, mn;
  scale_min_k4(b + 4, s, &sc, &mn);
  const float d = f16_at(b) * sc, m = f16_at(b + 2) * mn;
  const uint4* qs = (const uint4*)(b + 16 + 32 * (s >> 1));
  const int sh = 4 * (s & 1);
#pragma unroll
  for (int k = 0; k < 2; k++) {
    const uint4 q = __ldg(qs + k);
    const u32 w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int e = 0; e < 16; e++) v[16 * k + e] = fmaf((float)((w[e >> 2] >> (8 * (e & 3) + sh)) & 15u), d, -m);
  }
}
// Q5_K: d, dmin, scales[12], qh[32], qs[128]; as Q4_K plus bit s of qh[i] as the fifth bit.
template <> __device__ __forceinline__ void qdecode32<13>(const u8* b, int s, float* v) {
  float sc, mn;
  scale_min_k4(b + 4, s, &sc, &mn);
  const float d = f16_at(b) * sc, m = f16_at(b + 2) * mn;
  const u8* qs = b + 48 + 32 * (s >> 1);
  const int sh = 4 * (s & 1);
#pragma unroll
  for (int k = 0; k < 8; k++) {
    const u32 w = ld_a4(qs + 4 * k), h = ld_a4(b + 16 + 4 * k);
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const u32 q = ((w >> (8 * j + sh)) & 15u) | (((h >> (8 * j + s)) & 1u) << 4);
      v[4 * k + j] = fmaf((float)q, d, -m);
    }
  }
}
// Q6_K: ql[128], qh[64], scales[16] (signed), d; element 32s + i (s = 4h + t) takes nibble t/2
// of ql[64h + 32(t%2) + i] and bits 2t.. of qh[32h + i] as bits 4 and 5, minus 32.
template <> __device__ __forceinline__ void qdecode32<14>(const u8* b, int s, float* v) {
  const float d = f16_at(b + 208);
  const int h = s >> 2, t = s & 3;
  const u8* ql = b + 64 * h + 32 * (t & 1);
  const u8* qh = b + 128 + 32 * h;
  const int sl = 4 * (t >> 1), sh = 2 * t;
#pragma unroll
  for (int half = 0; half < 2; half++) {
    const float dl = d * (float)(signed char)__ldg(b + 192 + 2 * s + half);
#pragma unroll
    for (int k = 0; k < 4; k++) {
      const int i0 = 16 * half + 4 * k;
      const u32 w = ld_a2(ql + i0), hb = ld_a2(qh + i0);
#pragma unroll
      for (int j = 0; j < 4; j++) {
        const int q = (int)(((w >> (8 * j + sl)) & 15u) | (((hb >> (8 * j + sh)) & 3u) << 4)) - 32;
        v[i0 + j] = dl * (float)q;
      }
    }
  }
}
// IQ4_XS: d, scales_h (u16), scales_l[4], qs[128]; sub-block s has the signed 6-bit scale
// (nibble s%2 of scales_l[s/2]) | (bits 2s.. of scales_h) << 4, minus 32; its element 16n + j
// is nibble n of qs[16s + j], an index into the code book.
template <> __device__ __forceinline__ void qdecode32<23>(const u8* b, int s, float* v) {
  const u32 lo = (__ldg(b + 4 + (s >> 1)) >> (4 * (s & 1))) & 15u;
  const u32 hi = (__ldg((const u16*)(b + 2)) >> (2 * s)) & 3u;
  const float dl = f16_at(b) * (float)((int)(lo | (hi << 4)) - 32);
#pragma unroll
  for (int k = 0; k < 4; k++) {
    const u32 w = ld_a4(b + 8 + 16 * s + 4 * k);
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const u32 q = (w >> (8 * j)) & 0xffu;
      v[4 * k + j] = dl * iq4_value(q & 15u);
      v[16 + 4 * k + j] = dl * iq4_value(q >> 4);
    }
  }
}

// The decoders the kernels are templated on: `row_bytes(cols, group)` and `unit(row, u, group,
// v)` (elements 32u .. 32u + 31 of a row). `group` is the MLX group size (unused by GGUF types).
template <int Q> struct Gguf {
  static __device__ __forceinline__ u64 row_bytes(int cols, int) {
    return (u64)(cols / QT<Q>::elems) * QT<Q>::bytes;
  }
  static __device__ __forceinline__ void unit(const u8* row, int u, int, float* v) {
    constexpr int per = QT<Q>::elems / 32;
    qdecode32<Q>(row + (u64)(u / per) * QT<Q>::bytes, u % per, v);
  }
};

// MLX affine groups, interleaved at load as [scale][bias][group * BITS / 8 bytes]: element j
// of a group is byte j (8 bits) or nibble j % 2 of byte j / 2 (4 bits); value scale * q + bias.
// SCALE: 0 f16, 1 bf16, 2 f32 (the checkpoint's float type). Blocks are 4-byte aligned.
template <int SCALE> __device__ __forceinline__ float mlx_scale(const u8* p) {
  if (SCALE == 2) return __ldg((const float*)p);
  const u16 h = __ldg((const u16*)p);
  return SCALE == 0 ? h2f(h) : __uint_as_float((u32)h << 16);
}
template <int BITS, int SCALE> struct Mlx {
  static constexpr int ss = SCALE == 2 ? 4 : 2;
  static __device__ __forceinline__ u64 row_bytes(int cols, int group) {
    return (u64)(cols / group) * (2 * ss + group * BITS / 8);
  }
  static __device__ __forceinline__ void unit(const u8* row, int u, int group, float* v) {
    const int e = 32 * u;
    const u8* b = row + (u64)(e / group) * (2 * ss + group * BITS / 8);
    const float s = mlx_scale<SCALE>(b), bias = mlx_scale<SCALE>(b + ss);
    const u8* q = b + 2 * ss + (e % group) * BITS / 8;
#pragma unroll
    for (int k = 0; k < BITS; k++) {
      const u32 w = ld_a4(q + 4 * k);
#pragma unroll
      for (int j = 0; j < 32 / BITS; j++) {
        const u32 x = (w >> (BITS * j)) & ((1u << BITS) - 1u);
        v[(32 / BITS) * k + j] = fmaf((float)x, s, bias);
      }
    }
  }
};

// The dot product of 32 decoded weights with 32 activations of T at x (16-byte aligned).
__device__ __forceinline__ float dot32(const float* v, const bf16_t* x) {
  const uint4* xv = (const uint4*)x;
  float s = 0.f;
#pragma unroll
  for (int k = 0; k < 4; k++) {
    float xf[8];
    unpack16(__ldg(xv + k), xf, bf16_t());
#pragma unroll
    for (int e = 0; e < 8; e++) s = fmaf(v[8 * k + e], xf[e], s);
  }
  return s;
}
__device__ __forceinline__ float dot32(const float* v, const float* x) {
  const float4* xv = (const float4*)x;
  float s = 0.f;
#pragma unroll
  for (int k = 0; k < 8; k++) {
    const float4 a = __ldg(xv + k);
    s = fmaf(v[4 * k], a.x, s); s = fmaf(v[4 * k + 1], a.y, s);
    s = fmaf(v[4 * k + 2], a.z, s); s = fmaf(v[4 * k + 3], a.w, s);
  }
  return s;
}

// Stores 32 floats as T at dst (16-byte aligned).
__device__ __forceinline__ void store32(bf16_t* dst, const float* v) {
  uint4* o = (uint4*)dst;
#pragma unroll
  for (int k = 0; k < 4; k++)
    o[k] = make_uint4(pack_bf16x2(v[8 * k], v[8 * k + 1]), pack_bf16x2(v[8 * k + 2], v[8 * k + 3]),
                      pack_bf16x2(v[8 * k + 4], v[8 * k + 5]), pack_bf16x2(v[8 * k + 6], v[8 * k + 7]));
}
__device__ __forceinline__ void store32(float* dst, const float* v) {
  float4* o = (float4*)dst;
#pragma unroll
  for (int k = 0; k < 8; k++) o[k] = make_float4(v[4 * k], v[4 * k + 1], v[4 * k + 2], v[4 * k + 3]);
}

// The warp's sums of row r for nt tokens into y (+ bias[r]; + y where `accumulate`).
template <typename T>
__device__ __forceinline__ void qgemv_store(T* y, const float (&acc)[8], int nt, int rows, int r,
                                            const float* bias, int accumulate) {
#pragma unroll
  for (int t = 0; t < 8; t++) {
    if (t >= nt) break;
    const float s = warp_sum(acc[t]);
    if ((threadIdx.x & 31) == 0) {
      const u64 at = (u64)t * rows + r;
      const float out = s + (bias ? bias[r] : 0.f);
      y[at] = from_f<T>(accumulate ? out + to_f(y[at]) : out);
    }
  }
}

// y[t, r] = x[t] · w[r] (+ bias[r]; + y[t, r] where `accumulate`) for nt <= 8 tokens: one warp
// per weight row, its lanes taking 32-element units in turn, so each weight is read and decoded
// once for all tokens. Grid: rows / 8 blocks of 256 threads (rounded up).
template <typename T, typename D>
__device__ void qgemv_impl(T* y, const T* x, const u8* w, const float* bias, int rows, int cols,
                           int nt, int accumulate, int group) {
  PDL_ENTRY();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int r = blockIdx.x * 8 + warp;
  if (r >= rows) return;
  const u8* wr = w + (u64)r * D::row_bytes(cols, group);
  float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  for (int u = lane; u < cols / 32; u += 32) {
    float v[32];
    D::unit(wr, u, group, v);
#pragma unroll
    for (int t = 0; t < 8; t++)
      if (t < nt) acc[t] += dot32(v, x + (u64)t * cols + 32 * u);
  }
  qgemv_store(y, acc, nt, rows, r, bias, accumulate);
}

// out[i, :] = row i of w decoded to T, for the `units / (cols / 32)` rows at w (a chunk of a
// matrix, for a GEMM that reads it next). Grid-stride over 32-element units.
template <typename T, typename D>
__device__ void qdequant_impl(T* out, const u8* w, int cols, u64 units, int group) {
  PDL_ENTRY();
  const int per_row = cols / 32;
  for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < units; i += (u64)gridDim.x * blockDim.x) {
    const u64 row = i / per_row;
    const int u = (int)(i % per_row);
    float v[32];
    D::unit(w + row * D::row_bytes(cols, group), u, group, v);
    store32(out + row * cols + 32 * u, v);
  }
}

// out[b, :] = row ids[b] of the table, decoded (one block per id).
template <typename T, typename D>
__device__ void qembed_impl(T* out, const u8* table, const u32* ids, int cols, int group) {
  PDL_ENTRY();
  const u8* wr = table + (u64)ids[blockIdx.x] * D::row_bytes(cols, group);
  for (int u = threadIdx.x; u < cols / 32; u += blockDim.x) {
    float v[32];
    D::unit(wr, u, group, v);
    store32(out + (u64)blockIdx.x * cols + 32 * u, v);
  }
}

// ---- Q4_K / Q6_K GEMV with int8 activations (bf16 models, up to 8 tokens) ----
// Each block first quantises the step's activations into shared memory per 32 elements:
// xq[t * cols + i] = round(x / d) with d = amax / 127 over the 32, and xds[t * cols / 32 + u] =
// (d, d * sum of the 32 q). A weight unit's dot product with x is then integer dot products of
// 4 bytes at a time (dp4a) scaled once: for Q4_K, over a sub-block of 32, sum of
// (d sc q - dmin m) x = d sc dx sum(q xq) - dmin m s; for Q6_K, d sc dx sum((q - 32) xq) per 16
// elements. The weights are read as in qgemv_impl (a warp per row), but each lane takes a Q4_K
// pair of sub-blocks (the two nibbles of the same 32 bytes) or a Q6_K unit of 32.
#define QI8_ROWS 8  // rows (warps) per block

// n elements of x (n a multiple of 32) into xq / xds: 8 threads per 32 elements, 4 each.
template <typename T>
__device__ __forceinline__ void quantize_q8_block(signed char* xq, float2* xds, const T* x, int n) {
  for (int i = 4 * threadIdx.x; i < n; i += 4 * blockDim.x) {
    float v[4];
#pragma unroll
    for (int e = 0; e < 4; e++) v[e] = to_f(x[i + e]);
    float amax = fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3])));
#pragma unroll
    for (int o = 1; o < 8; o <<= 1) amax = fmaxf(amax, __shfl_xor_sync(FULL_MASK, amax, o));
    const float d = amax / 127.f;
    int q[4], sum = 0;
#pragma unroll
    for (int e = 0; e < 4; e++) {
      q[e] = amax > 0.f ? __float2int_rn(v[e] / d) : 0;
      sum += q[e];
    }
#pragma unroll
    for (int o = 1; o < 8; o <<= 1) sum += __shfl_xor_sync(FULL_MASK, sum, o);
    *(int*)(xq + i) = (q[0] & 0xff) | ((q[1] & 0xff) << 8) | ((q[2] & 0xff) << 16) | ((q[3] & 0xff) << 24);
    if ((threadIdx.x & 7) == 0) xds[i / 32] = make_float2(d, d * (float)sum);
  }
}

// The 8 words of 32 int8 activations at p (16-byte aligned).
__device__ __forceinline__ void load_xq32(const signed char* p, int* w) {
  const int4 a = *(const int4*)p, b = *(const int4*)(p + 16);
  w[0] = a.x; w[1] = a.y; w[2] = a.z; w[3] = a.w;
  w[4] = b.x; w[5] = b.y; w[6] = b.z; w[7] = b.w;
}

// Q4_K pair j (sub-blocks 2j and 2j + 1) of the block at b (its 32 quant bytes in qw) against
// one token's activations of the same 64 elements (xq, and the two (d, s) at ds).
__device__ __forceinline__ float q4k_pair_dot(const u8* b, int j, const u32* qw,
                                              const signed char* xq, const float2* ds) {
  float sc0, m0, sc1, m1;
  scale_min_k4(b + 4, 2 * j, &sc0, &m0);
  scale_min_k4(b + 4, 2 * j + 1, &sc1, &m1);
  int xl[8], xh[8];
  load_xq32(xq, xl);
  load_xq32(xq + 32, xh);
  int lo = 0, hi = 0;
#pragma unroll
  for (int k = 0; k < 8; k++) {
    lo = __dp4a((int)(qw[k] & 0x0f0f0f0fu), xl[k], lo);
    hi = __dp4a((int)((qw[k] >> 4) & 0x0f0f0f0fu), xh[k], hi);
  }
  const float d = f16_at(b), dmin = f16_at(b + 2);
  return d * (sc0 * ds[0].x * (float)lo + sc1 * ds[1].x * (float)hi) - dmin * (m0 * ds[0].y + m1 * ds[1].y);
}

// Q6_K unit s (32 elements) of the block at b against 32 int8 activations with scale dx.
__device__ __forceinline__ float q6k_unit_dot(const u8* b, int s, const signed char* xq, float dx) {
  const int h = s >> 2, t = s & 3;
  const u8* ql = b + 64 * h + 32 * (t & 1);
  const u8* qh = b + 128 + 32 * h;
  const int sl = 4 * (t >> 1), sh = 2 * t;
  int xw[8];
  load_xq32(xq, xw);
  int part[2] = {0, 0};
#pragma unroll
  for (int k = 0; k < 8; k++) {
    const u32 w = ld_a2(ql + 4 * k), hb = ld_a2(qh + 4 * k);
    const u32 q = ((w >> sl) & 0x0f0f0f0fu) | (((hb >> sh) & 0x03030303u) << 4);
    part[k >> 2] = __dp4a((int)__vsub4(q, 0x20202020u), xw[k], part[k >> 2]);
  }
  const float sc0 = (float)(signed char)__ldg(b + 192 + 2 * s);
  const float sc1 = (float)(signed char)__ldg(b + 192 + 2 * s + 1);
  return f16_at(b + 208) * dx * (sc0 * (float)part[0] + sc1 * (float)part[1]);
}

// y[t, r] = x[t] · w[r] (+ bias, + y where `accumulate`) for nt <= 8 tokens; Q = 12 (Q4_K, a
// lane per 64-element pair) or 14 (Q6_K, a lane per 32-element unit). Dynamic shared memory:
// nt * cols * 5 / 4 bytes (xq, then xds). Grid: rows / QI8_ROWS blocks of 32 * QI8_ROWS.
template <typename T, int Q>
__device__ void qgemv_i8_impl(T* y, const T* x, const u8* w, const float* bias, int rows, int cols,
                              int nt, int accumulate) {
  extern __shared__ __align__(16) unsigned char qi8_smem[];
  signed char* xq = (signed char*)qi8_smem;
  float2* xds = (float2*)(qi8_smem + nt * cols);
  PDL_ENTRY();
  quantize_q8_block(xq, xds, x, nt * cols);
  __syncthreads();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int r = blockIdx.x * QI8_ROWS + warp;
  if (r >= rows) return;
  const u8* wr = w + (u64)r * (cols / 256) * QT<Q>::bytes;
  const int units = cols / 32;
  float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  if (Q == 12) {
    for (int p = lane; p < cols / 64; p += 32) {
      const u8* b = wr + (u64)(p >> 2) * QT<Q>::bytes;
      const uint4 q0 = __ldg((const uint4*)(b + 16 + 32 * (p & 3)));
      const uint4 q1 = __ldg((const uint4*)(b + 32 + 32 * (p & 3)));
      const u32 qw[8] = {q0.x, q0.y, q0.z, q0.w, q1.x, q1.y, q1.z, q1.w};
#pragma unroll
      for (int t = 0; t < 8; t++)
        if (t < nt) acc[t] += q4k_pair_dot(b, p & 3, qw, xq + t * cols + 64 * p, xds + t * units + 2 * p);
    }
  } else {
    for (int u = lane; u < units; u += 32) {
      const u8* b = wr + (u64)(u >> 3) * QT<Q>::bytes;
#pragma unroll
      for (int t = 0; t < 8; t++)
        if (t < nt) acc[t] += q6k_unit_dot(b, u & 7, xq + t * cols + 32 * u, xds[t * units + u].x);
    }
  }
  qgemv_store(y, acc, nt, rows, r, bias, accumulate);
}

#define QGEMV_I8_KERNELS(T, S)                                                                     \
  extern "C" __global__ void __launch_bounds__(32 * QI8_ROWS) qgemv_i8_q4_k_##S(                  \
      T* y, const T* x, const u8* w, const float* bias, int rows, int cols, int nt,                \
      int accumulate) {                                                                            \
    qgemv_i8_impl<T, 12>(y, x, w, bias, rows, cols, nt, accumulate);                               \
  }                                                                                                \
  extern "C" __global__ void __launch_bounds__(32 * QI8_ROWS) qgemv_i8_q6_k_##S(                  \
      T* y, const T* x, const u8* w, const float* bias, int rows, int cols, int nt,                \
      int accumulate) {                                                                            \
    qgemv_i8_impl<T, 14>(y, x, w, bias, rows, cols, nt, accumulate);                               \
  }

QGEMV_I8_KERNELS(float, f32)
QGEMV_I8_KERNELS(bf16_t, bf16)

#define QKERNELS(T, S, D, NAME)                                                                    \
  extern "C" __global__ void __launch_bounds__(256) qgemv_##NAME##_##S(                           \
      T* y, const T* x, const u8* w, const float* bias, int rows, int cols, int nt,                \
      int accumulate, int group) {                                                                 \
    qgemv_impl<T, D>(y, x, w, bias, rows, cols, nt, accumulate, group);                            \
  }                                                                                                \
  extern "C" __global__ void __launch_bounds__(256) qdequant_##NAME##_##S(                        \
      T* out, const u8* w, int cols, u64 units, int group) {                                       \
    qdequant_impl<T, D>(out, w, cols, units, group);                                               \
  }                                                                                                \
  extern "C" __global__ void __launch_bounds__(256) qembed_##NAME##_##S(                          \
      T* out, const u8* table, const u32* ids, int cols, int group) {                              \
    qembed_impl<T, D>(out, table, ids, cols, group);                                               \
  }

#define QKERNELS_ALL(T, S)              \
  QKERNELS(T, S, Gguf<2>, q4_0)         \
  QKERNELS(T, S, Gguf<3>, q4_1)         \
  QKERNELS(T, S, Gguf<6>, q5_0)         \
  QKERNELS(T, S, Gguf<7>, q5_1)         \
  QKERNELS(T, S, Gguf<8>, q8_0)         \
  QKERNELS(T, S, Gguf<10>, q2_k)        \
  QKERNELS(T, S, Gguf<11>, q3_k)        \
  QKERNELS(T, S, Gguf<12>, q4_k)        \
  QKERNELS(T, S, Gguf<13>, q5_k)        \
  QKERNELS(T, S, Gguf<14>, q6_k)        \
  QKERNELS(T, S, Gguf<20>, iq4_nl)      \
  QKERNELS(T, S, Gguf<23>, iq4_xs)      \
  QKERNELS(T, S, MLX_4_F16, mlx4_f16)   \
  QKERNELS(T, S, MLX_4_BF16, mlx4_bf16) \
  QKERNELS(T, S, MLX_4_F32, mlx4_f32)   \
  QKERNELS(T, S, MLX_8_F16, mlx8_f16)   \
  QKERNELS(T, S, MLX_8_BF16, mlx8_bf16) \
  QKERNELS(T, S, MLX_8_F32, mlx8_f32)

// Template arguments with commas cannot go through a macro argument.
typedef Mlx<4, 0> MLX_4_F16;
typedef Mlx<4, 1> MLX_4_BF16;
typedef Mlx<4, 2> MLX_4_F32;
typedef Mlx<8, 0> MLX_8_F16;
typedef Mlx<8, 1> MLX_8_BF16;
typedef Mlx<8, 2> MLX_8_F32;

QKERNELS_ALL(float, f32)
QKERNELS_ALL(bf16_t, bf16)
