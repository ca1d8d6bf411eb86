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
// bisection on the scaled logit (SAMPLE_BISECT halvings of at most [-88, 0], a step of 5e-6),
// so tokens tied with the cut within that step are kept.
// One block of 1024 threads per row.
#define SAMPLE_PARAMS 5
#define SAMPLE_BISECT 24
#define SAMPLE_THREADS 1024

// Scaled logit of column c: (logit - max) / temperature, so the largest is 0.
template <typename T>
__device__ __forceinline__ float sample_z(const T* row, int c, float mx, float inv_t) {
  return (to_f(row[c]) - mx) * inv_t;
}

// Largest t in [lo, 0] with count(z >= t) >= k (when `by_mass` is 0) or with
// sum_{z >= t} exp(z) >= want (when 1); the invariant holds at `lo` on entry.
template <typename T>
__device__ float sample_bisect(const T* row, int cols, float mx, float inv_t, float lo, float want,
                               int by_mass) {
  float hi = 0.f;
  for (int it = 0; it < SAMPLE_BISECT; it++) {
    const float mid = 0.5f * (lo + hi);
    float acc = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
      const float z = sample_z(row, c, mx, inv_t);
      if (z >= mid) acc += by_mass ? expf(z) : 1.f;
    }
    if (block_sum(acc) >= want) lo = mid; else hi = mid;
  }
  return lo;
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
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    const float l = to_f(row[c]);
    mx = fmaxf(mx, l);
    mn = fminf(mn, l);
  }
  mx = block_max(mx);
  mn = -block_max(-mn);
  const float inv_t = 1.f / temp;
  // Count and mass are full at zmin. Below -88 exp(z) is 0 in f32: such tokens can never be
  // drawn, so starting there keeps the bisection's range (and step) small.
  float thr = fmaxf((mn - mx) * inv_t, -88.f);
  if (top_k > 0 && top_k < cols) thr = sample_bisect(row, cols, mx, inv_t, thr, (float)top_k, 0);
  if (top_p < 1.f) {
    float total = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
      const float z = sample_z(row, c, mx, inv_t);
      if (z >= thr) total += expf(z);
    }
    thr = sample_bisect(row, cols, mx, inv_t, thr, top_p * block_sum(total), 1);
  }
  if (min_p > 0.f) thr = fmaxf(thr, logf(min_p));
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

#define SAMPLE_KERNELS(T, S)                                                                       \
  extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)                                     \
      sample_##S(u32* ids, const T* logits, int cols, const float* params) { PDL_ENTRY();                       \
    sample_impl<T>(ids, logits, cols, params);                                                     \
  }

SAMPLE_KERNELS(float, f32)
SAMPLE_KERNELS(bf16_t, bf16)
