// kr-cuda sampling (appended to kernels.cu by the loader): one token per logits row, chosen on
// the GPU so that only token ids cross PCIe. Per row, SAMPLE_PARAMS floats: temperature
// (<= 0: greedy), top_k (0: off), top_p (1: off), min_p (0: off) and a uniform number in
// [0, 1) drawn by the host from the request's own seeded generator.
//
// Semantics match the CPU sampler's set of candidates: scale by 1/temperature; keep the top_k
// largest; of those, the smallest most-likely set whose probability reaches top_p; of those,
// the ones with probability >= min_p x the largest. The draw walks the kept tokens in
// vocabulary order (the CPU walks them most-likely first), so one seed gives the same
// distribution on both, not the same tokens. The top_k and top_p cuts are thresholds found by
// search on the scaled logit (sample_search: [-88, 0] at most, narrowed 2^24-fold to a step of
// 5e-6), so tokens tied with the cut within that step are kept. Every pass over a row reads
// it with for_each_logit (16-byte vectors); the draw runs by spans (sample_draw_by_spans).
// One block of 1024 threads per row. A sixth word per row (read as bits) names the row's mask
// of allowed tokens for mask_logits, which runs first; NO_MASK: none.
#define SAMPLE_PARAMS 6
#define NO_MASK 0xffffffffu
#define SAMPLE_THREADS 1024

// Scaled logit: (logit - max) / temperature, so the largest is 0; sample_z of column c.
__device__ __forceinline__ float scaled_logit(float x, float mx, float inv_t) { return (x - mx) * inv_t; }
template <typename T>
__device__ __forceinline__ float sample_z(const T* row, int c, float mx, float inv_t) {
  return scaled_logit(to_f(row[c]), mx, inv_t);
}

// Largest t in [lo, 0] with count(z >= t) >= k (when `by_mass` is 0) or with
// sum_{z >= t} exp(z) >= want (when 1); the invariant holds at `lo` on entry. Each pass over
// the row tests SAMPLE_SPLITS - 1 evenly spaced thresholds at once and keeps the interval
// above the largest that holds: SAMPLE_ROUNDS passes narrow [lo, 0] by 8^8 = 2^24, as 24
// halvings would, in a third of the passes (each is a read of the whole row).
#define SAMPLE_SPLITS 8
#define SAMPLE_ROUNDS 8
template <typename T>
__device__ float sample_search(const T* row, int cols, float mx, float inv_t, float lo, float want,
                               int by_mass) {
  __shared__ float part[32][SAMPLE_SPLITS];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  float hi = 0.f;
  for (int round = 0; round < SAMPLE_ROUNDS; round++) {
    const float step = (hi - lo) / SAMPLE_SPLITS;
    float acc[SAMPLE_SPLITS - 1];
#pragma unroll
    for (int j = 0; j < SAMPLE_SPLITS - 1; j++) acc[j] = 0.f;
    for_each_logit(row, cols, [&](int, float x) {
      const float z = scaled_logit(x, mx, inv_t);
      if (z < lo + step) return;
      const float w = by_mass ? expf(z) : 1.f;
#pragma unroll
      for (int j = 0; j < SAMPLE_SPLITS - 1; j++)
        if (z >= lo + (j + 1) * step) acc[j] += w;
    });
#pragma unroll
    for (int j = 0; j < SAMPLE_SPLITS - 1; j++) {
      const float v = warp_sum(acc[j]);
      if (lane == 0) part[warp][j] = v;
    }
    __syncthreads();
    // Every thread sums the warps' parts in the same order, so all pick the same threshold.
    int best = -1;
    for (int j = 0; j < SAMPLE_SPLITS - 1; j++) {
      float total = 0.f;
      for (int w = 0; w < warps; w++) total += part[w][j];
      if (total >= want) best = j;
    }
    __syncthreads();  // `part` is rewritten by the next round
    const float new_lo = best >= 0 ? lo + (best + 1) * step : lo;
    hi = best + 2 < SAMPLE_SPLITS ? lo + (best + 2) * step : hi;
    lo = new_lo;
  }
  return lo;
}

// The draw in vocabulary order without a thread walking a run of columns (latency-bound: one
// load after another): for a 16-byte-aligned row of whole vectors, spans of 32 vectors (32
// lanes of a warp) hold the kept mass, warp 0 finds the span where the running mass passes
// u * mass and then, inside it, the lane and column. Sums run in a fixed order (warp sums,
// lane prefixes), so a seed gives the same token every time. Rounding that leaves the target
// uncrossed takes the last kept column, as the walk does. False (nothing written): not such
// a row; the caller walks runs of columns instead.
#define SAMPLE_MAX_SPANS 2048

template <typename T>
__device__ __forceinline__ float sample_vector_mass(uint4 w, float mx, float inv_t, float thr) {
  float x[8], m = 0.f;
  unpack16(w, x, T());
#pragma unroll
  for (int e = 0; e < 16 / (int)sizeof(T); e++) {
    const float z = scaled_logit(x[e], mx, inv_t);
    if (z >= thr) m += expf(z);
  }
  return m;
}

// Kept mass of each span of 32 vectors of the row into span_mass (warp w takes spans w,
// w + warps, ...; four loads in flight per lane).
template <typename T>
__device__ void sample_span_masses(const uint4* rv, int nv, float mx, float inv_t, float thr,
                                   float* span_mass) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  const int spans = (nv + 31) / 32;
  for (int s0 = warp; s0 < spans; s0 += 4 * warps) {
    uint4 w[4];
#pragma unroll
    for (int u = 0; u < 4; u++) {
      const int v = (s0 + u * warps) * 32 + lane;
      w[u] = v < nv ? rv[v] : make_uint4(0u, 0u, 0u, 0u);
    }
#pragma unroll
    for (int u = 0; u < 4; u++) {
      const int s = s0 + u * warps, v = s * 32 + lane;
      const float m = warp_sum(v < nv ? sample_vector_mass<T>(w[u], mx, inv_t, thr) : 0.f);
      if (lane == 0 && s < spans) span_mass[s] = m;
    }
  }
}

// Inclusive prefix sum over the warp.
__device__ __forceinline__ float warp_prefix(float v) {
  const int lane = threadIdx.x & 31;
  for (int o = 1; o < 32; o <<= 1) {
    const float y = __shfl_up_sync(FULL_MASK, v, o);
    if (lane >= o) v += y;
  }
  return v;
}

// Warp 0: the span whose running mass passes the target (else the last with mass), and the
// mass before it. Lane l sums spans [l * per, (l + 1) * per) in order.
__device__ void sample_find_span(const float* span_mass, int spans, float u, int& span,
                                 float& before, float& target) {
  const int lane = threadIdx.x & 31, per = (spans + 31) / 32;
  const int s0 = min(spans, lane * per), s1 = min(spans, s0 + per);
  float mine = 0.f;
  int last = -1;
  for (int s = s0; s < s1; s++) {
    mine += span_mass[s];
    if (span_mass[s] > 0.f) last = s;
  }
  const float incl = warp_prefix(mine);
  target = u * __shfl_sync(FULL_MASK, incl, 31);
  // Only a lane with mass can hold the crossing (the scan's rounding differs per lane).
  const unsigned crossed = __ballot_sync(FULL_MASK, last >= 0 && incl > target);
  const unsigned has_mass = __ballot_sync(FULL_MASK, last >= 0);
  const int l = crossed ? __ffs(crossed) - 1 : 31 - __clz(has_mass);
  // Lane l walks its spans: the first with mass whose end passes the target, else (rounding)
  // its last with mass; `at` is the mass before that span.
  float acc = incl - mine, at = 0.f;
  int found = last;
  if (lane == l && crossed) {
    for (int s = s0; s < s1; s++) {
      if (span_mass[s] > 0.f) {
        found = s;
        at = acc;
        if (acc + span_mass[s] > target) break;
      }
      acc += span_mass[s];
    }
  }
  if (l < 0) {  // no kept mass at all (a row of NaN): no span
    span = -1;
    before = -INFINITY;
    return;
  }
  span = __shfl_sync(FULL_MASK, found, l);
  // -INFINITY: nothing crosses, so the span's last lane with mass takes its last kept column.
  before = crossed ? __shfl_sync(FULL_MASK, at, l) : -INFINITY;
}

template <typename T>
__device__ bool sample_draw_by_spans(u32* ids, const T* row, int cols, float mx, float inv_t,
                                     float thr, float u) {
  __shared__ float span_mass[SAMPLE_MAX_SPANS];
  constexpr int EPV = 16 / sizeof(T);
  const int nv = cols / EPV, spans = (nv + 31) / 32;
  if (((u64)row & 15) != 0 || cols % EPV != 0 || spans > SAMPLE_MAX_SPANS) return false;
  const uint4* rv = (const uint4*)row;
  sample_span_masses<T>(rv, nv, mx, inv_t, thr, span_mass);
  __syncthreads();
  if (threadIdx.x >= 32) return true;
  int span;
  float before, target;
  sample_find_span(span_mass, spans, u, span, before, target);
  if (span < 0) {
    if (threadIdx.x == 0) ids[blockIdx.x] = 0;
    return true;
  }
  const int lane = threadIdx.x, v = span * 32 + lane;
  const uint4 w = v < nv ? rv[v] : make_uint4(0u, 0u, 0u, 0u);
  const float m = v < nv ? sample_vector_mass<T>(w, mx, inv_t, thr) : 0.f;
  const float incl = warp_prefix(m);
  const unsigned crossed = __ballot_sync(FULL_MASK, m > 0.f && before + incl > target);
  const unsigned has_mass = __ballot_sync(FULL_MASK, m > 0.f);
  const int l = crossed ? __ffs(crossed) - 1 : 31 - __clz(has_mass);
  if (lane != l) return true;
  // The lane where the running mass passes the target walks its columns to the one that
  // does; otherwise (rounding) the last lane with mass takes its last kept column.
  float x[8], acc = before + incl - m;
  unpack16(w, x, T());
  int last = v * EPV;
  for (int e = 0; e < EPV; e++) {
    const float z = scaled_logit(x[e], mx, inv_t);
    if (z >= thr) {
      last = v * EPV + e;
      acc += expf(z);
      if (crossed && acc > target) break;
    }
  }
  ids[blockIdx.x] = (u32)last;
  return true;
}

template <typename T>
__device__ void sample_impl(u32* ids, const T* logits, int cols, const float* params) {
  __shared__ float chunk_mass[SAMPLE_THREADS];
  __shared__ int owner;
  __shared__ float owner_before, target;
  const T* row = logits + (u64)blockIdx.x * cols;
  const float* p = params + SAMPLE_PARAMS * blockIdx.x;
  const float temp = p[0], top_p = p[2], min_p = p[3], u = p[4];
  const int top_k = (int)p[1];
  if (!(temp > 0.f)) {
    argmax_impl<T>(ids, logits, cols);
    return;
  }
  float mx = -INFINITY, mn = INFINITY;
  for_each_logit(row, cols, [&](int, float l) {
    mx = fmaxf(mx, l);
    mn = fminf(mn, l);
  });
  mx = block_max(mx);
  mn = -block_max(-mn);
  const float inv_t = 1.f / temp;
  // Count and mass are full at zmin. Below -88 exp(z) is 0 in f32: such tokens can never be
  // drawn, so starting there keeps the search's range (and step) small.
  float thr = fmaxf(scaled_logit(mn, mx, inv_t), -88.f);
  if (top_k > 0 && top_k < cols) thr = sample_search(row, cols, mx, inv_t, thr, (float)top_k, 0);
  if (top_p < 1.f) {
    float total = 0.f;
    for_each_logit(row, cols, [&](int, float x) {
      const float z = scaled_logit(x, mx, inv_t);
      if (z >= thr) total += expf(z);
    });
    thr = sample_search(row, cols, mx, inv_t, thr, top_p * block_sum(total), 1);
  }
  if (min_p > 0.f) thr = fmaxf(thr, logf(min_p));
  if (sample_draw_by_spans<T>(ids, row, cols, mx, inv_t, thr, u)) return;
  // Each thread owns a contiguous run of columns; the run whose mass crosses u * mass walks
  // its columns in order.
  const int per = (cols + blockDim.x - 1) / blockDim.x;
  const int c0 = threadIdx.x * per, c1 = min(cols, c0 + per);
  float mine = 0.f;
  for (int c = c0; c < c1; c++) {
    const float z = sample_z(row, c, mx, inv_t);
    if (z >= thr) mine += expf(z);
  }
  chunk_mass[threadIdx.x] = mine;
  __syncthreads();
  if (threadIdx.x == 0) {
    float mass = 0.f;
    for (int i = 0; i < (int)blockDim.x; i++) mass += chunk_mass[i];
    target = u * mass;
    float acc = 0.f;
    owner = -1;
    for (int i = 0; i < (int)blockDim.x; i++) {
      if (chunk_mass[i] > 0.f) {
        owner = i;  // the last run with mass, if rounding leaves the target uncrossed
        owner_before = acc;
        if (acc + chunk_mass[i] > target) break;
      }
      acc += chunk_mass[i];
    }
  }
  __syncthreads();
  if ((int)threadIdx.x != owner) return;
  float acc = owner_before;
  int last = c0;
  for (int c = c0; c < c1; c++) {
    const float z = sample_z(row, c, mx, inv_t);
    if (z >= thr) {
      last = c;
      acc += expf(z);
      if (acc > target) break;
    }
  }
  ids[blockIdx.x] = (u32)last;
}

// Sets the logits of tokens a row's mask does not allow to -inf before sampling (a grammar's
// next-token mask): block (row, part) takes 256 of the row's ceil(cols / 32) mask words, a
// thread one word of 32 columns. Mask m of `masks` holds words [m * words, (m + 1) * words).
template <typename T>
__device__ void mask_logits_impl(T* logits, int cols, const float* params, const u32* masks) {
  const u32 m = __float_as_uint(params[SAMPLE_PARAMS * blockIdx.x + 5]);
  const int words = (cols + 31) / 32, w = blockIdx.y * blockDim.x + threadIdx.x;
  if (m == NO_MASK || w >= words) return;
  const u32 bits = masks[(u64)m * words + w];
  if (bits == 0xffffffffu) return;
  T* row = logits + (u64)blockIdx.x * cols + (u64)w * 32;
  const int n = min(32, cols - w * 32);
  for (int i = 0; i < n; i++)
    if (!(bits >> i & 1u)) row[i] = from_f<T>(-INFINITY);
}

#define SAMPLE_KERNELS(T, S)                                                                       \
  extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)                                     \
      sample_##S(u32* ids, const T* logits, int cols, const float* params) { PDL_ENTRY();                       \
    sample_impl<T>(ids, logits, cols, params);                                                     \
  }                                                                                                \
  extern "C" __global__ void __launch_bounds__(256)                                                \
      mask_logits_##S(T* logits, int cols, const float* params, const u32* masks) {                \
    PDL_ENTRY();                                                                                   \
    mask_logits_impl<T>(logits, cols, params, masks);                                              \
  }

SAMPLE_KERNELS(float, f32)
SAMPLE_KERNELS(bf16_t, bf16)
