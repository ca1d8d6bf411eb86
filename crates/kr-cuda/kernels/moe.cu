// ---- Mixture-of-Experts blocks routed on the device (backend/moe.rs) ----
// The router's logits stay on the GPU. moe_topk picks each token's experts and weights as
// kr_model::weights::route_tokens does (softmax, the largest first, ties to the lower index;
// weights over the chosen ones' sum where `norm`, else over all); moe_gate_up runs each (token,
// slot) pair's gate and up rows through a table of expert weight pointers, one warp per row as
// the GEMV does; moe_down adds each token's weighted expert outputs into its residual row, the
// slots summed in order by one warp per output value (no atomics, so a token's result does
// not depend on the batch). ids[t * k + j] is token t's j-th expert, probs[t * k + j] its weight.
#define MOE_MAX_EXPERTS 256
#define MOE_MAX_TOPK 16

// One warp per token; logits rows of `experts` values.
template <typename T>
__device__ void moe_topk_impl(const T* logits, int experts, int k, int norm, int* ids, float* probs, int tokens) {
  constexpr int PER = MOE_MAX_EXPERTS / 32;
  const int t = blockIdx.x * 8 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (t >= tokens) return;
  float v[PER];
  float mx = -INFINITY;
#pragma unroll
  for (int i = 0; i < PER; i++) {
    const int e = lane + 32 * i;
    v[i] = e < experts ? to_f(logits[(u64)t * experts + e]) : -INFINITY;
    mx = fmaxf(mx, v[i]);
  }
  mx = warp_max(mx);
  float total = 0.f;
#pragma unroll
  for (int i = 0; i < PER; i++) {
    v[i] = lane + 32 * i < experts ? expf(v[i] - mx) : -1.f;  // -1: not an expert
    total += fmaxf(v[i], 0.f);
  }
  total = warp_sum(total);
  float kept = 0.f, chosen_p[MOE_MAX_TOPK];
  int chosen_e[MOE_MAX_TOPK];
  for (int j = 0; j < k; j++) {
    float best = -2.f;
    int at = 0x7fffffff;
#pragma unroll
    for (int i = 0; i < PER; i++)
      if (v[i] > best) { best = v[i]; at = lane + 32 * i; }  // increasing index: ties keep the lower
    for (int o = 16; o > 0; o >>= 1) {
      const float ob = __shfl_xor_sync(FULL_MASK, best, o);
      const int oa = __shfl_xor_sync(FULL_MASK, at, o);
      if (ob > best || (ob == best && oa < at)) { best = ob; at = oa; }
    }
    chosen_p[j] = best;
    chosen_e[j] = at;
    kept += best;
    if ((at & 31) == lane) v[at >> 5] = -2.f;  // taken
  }
  if (lane == 0) {
    const float denom = norm ? kept : total;
    for (int j = 0; j < k; j++) {
      ids[t * k + j] = chosen_e[j];
      probs[t * k + j] = chosen_p[j] / denom;
    }
  }
}

// act[p, r] = silu(h[p / k] · gate_e[r]) * (h[p / k] · up_e[r]), e = ids[p], for the pair p of
// blockIdx.x (pairs can pass the grid's y limit of 65,535); warp w takes row blockIdx.y * 8 + w.
template <typename T>
__device__ void moe_gate_up_impl(const T* h, const u64* table, const int* ids, T* act, int hidden, int ff, int k, int experts) {
  const int r = blockIdx.y * 8 + (threadIdx.x >> 5), lane = threadIdx.x & 31, p = blockIdx.x;
  if (r >= ff) return;
  const int e = ids[p];
  const T* gate = (const T*)table[e] + (u64)r * hidden;
  const T* up = (const T*)table[experts + e] + (u64)r * hidden;
  const T* x = h + (u64)(p / k) * hidden;
  float ag[1] = {0.f}, au[1] = {0.f};
  gemv_partial<T, 1>(ag, x, gate, hidden, lane, nullptr);
  gemv_partial<T, 1>(au, x, up, hidden, lane, nullptr);
  const float g = warp_sum(ag[0]), u = warp_sum(au[0]);
  if (lane == 0) act[(u64)p * ff + r] = from_f<T>(g / (1.f + expf(-g)) * u);
}

// x[t, r] += Σ_j probs[t, j] · (act[t * k + j] · down_e[r]), e = ids[t * k + j], the slots in
// order; warp w of block (t = blockIdx.x, blockIdx.y) takes row blockIdx.y * 8 + w.
template <typename T>
__device__ void moe_down_impl(T* x, const T* act, const u64* table, const int* ids, const float* probs, int hidden, int ff, int k, int experts) {
  const int r = blockIdx.y * 8 + (threadIdx.x >> 5), lane = threadIdx.x & 31, t = blockIdx.x;
  if (r >= hidden) return;
  float sum = 0.f;
  for (int j = 0; j < k; j++) {
    const int p = t * k + j;
    const T* down = (const T*)table[2 * experts + ids[p]] + (u64)r * ff;
    float a[1] = {0.f};
    gemv_partial<T, 1>(a, act + (u64)p * ff, down, ff, lane, nullptr);
    sum += probs[p] * warp_sum(a[0]);
  }
  if (lane == 0) {
    T* y = x + (u64)t * hidden + r;
    *y = from_f<T>(to_f(*y) + sum);
  }
}

#define MOE_KERNELS(T, S)                                                                            \
  extern "C" __global__ void moe_topk_##S(const T* logits, int experts, int k, int norm, int* ids,  \
                                          float* probs, int tokens) {                               \
    PDL_ENTRY();                                                                                     \
    moe_topk_impl<T>(logits, experts, k, norm, ids, probs, tokens);                                  \
  }                                                                                                  \
  extern "C" __global__ void moe_gate_up_##S(const T* h, const u64* table, const int* ids, T* act,  \
                                             int hidden, int ff, int k, int experts) {              \
    PDL_ENTRY();                                                                                     \
    moe_gate_up_impl<T>(h, table, ids, act, hidden, ff, k, experts);                                 \
  }                                                                                                  \
  extern "C" __global__ void moe_down_##S(T* x, const T* act, const u64* table, const int* ids,     \
                                          const float* probs, int hidden, int ff, int k,            \
                                          int experts) {                                            \
    PDL_ENTRY();                                                                                     \
    moe_down_impl<T>(x, act, table, ids, probs, hidden, ff, k, experts);                             \
  }

MOE_KERNELS(float, f32)
MOE_KERNELS(bf16_t, bf16)
