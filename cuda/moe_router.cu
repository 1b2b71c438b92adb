// CUDA MoE router. One warp per token, its lanes striding the row (coalesced loads and stores): max and sum
// by warp reductions, then the k largest probabilities by k warp arg-max passes (two __reduce_*_sync each),
// pass j taking the largest (p, -e) below pass j-1's pick in that order (so equal probabilities keep the
// lower expert first, as the CPU; NaNs are never picked). Assignments are counted per block in shared memory
// and the block counts added by the finalize pass: global atomics on E adjacent counters serialise in L2 (the
// kernel took 68 us with them for 16k tokens x top-8 of 64 on an H200, 41 without, 29 with more blocks). P_e
// and the z-loss sum are column sums in two fixed-order passes: the top-k kernel's blocks sum their tokens
// while the row is in registers (a separate pass over probs cost 15.5 us there), the finalize pass adds the
// blocks in order, one warp per column, and one warp finishes both losses: no float atomics anywhere, bitwise
// reproducible.
#include "ultramem/ops/moe_router.h"

#include <algorithm>
#include <type_traits>

#include "common.cuh"
#include "ultramem/core/arena.h"

namespace um::cuda {
namespace {

constexpr int kMaxK = int(ops::kMoeMaxTopK);
static_assert(kMaxK <= 32, "one lane per selected slot");
constexpr int kWarps = 4;  // tokens per block of the backward kernel
// The top-k kernel: grid-stride warps, at most kTopkBlocks blocks (a fixed grid: see the kernel).
constexpr int kTopkWarps = 8, kTopkBlocks = 1024;

// One token: softmax, top-k, the token's outputs; lane j < k returns slot j's expert (-1 on other lanes).
// The row stays in registers, V values per lane (expert lane + 32 i), so the k passes read no memory;
// the warp's running column sums get the token's probabilities (p_sums, per lane) and lse^2 (z_sum).
template <int V>
__device__ __forceinline__ int route_token(const float* __restrict__ logits, int t, int E, int k, bool renormalize,
                                           float* __restrict__ probs, float* __restrict__ lse,
                                           float* __restrict__ weights, int32_t* __restrict__ experts,
                                           float (&p_sums)[V], float& z_sum) {
  const int lane = threadIdx.x & 31;
  const float* x = logits + int64_t(t) * E;
  float* p = probs + int64_t(t) * E;
  float v[V];
  float m = -INFINITY;
#pragma unroll
  for (int i = 0; i < V; ++i) {
    const int e = lane + 32 * i;
    v[i] = e < E ? x[e] : -INFINITY;
    m = fmaxf(m, v[i]);
  }
  m = warp_max(m);
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < V; ++i) {
    v[i] = lane + 32 * i < E ? expf(v[i] - m) : 0.f;
    s += v[i];
  }
  s = warp_sum(s);
  const float l = m + logf(s);
#pragma unroll
  for (int i = 0; i < V; ++i)
    if (lane + 32 * i < E) v[i] /= s, p[lane + 32 * i] = v[i], p_sums[i] += v[i];
  // Pass j: the largest (v, -e) strictly below pass j-1's pick (pk, -pe). A probability is ranked by its
  // key, its bits + 1 (order-preserving for v >= 0; 0 for NaN and the padding lanes: never picked), so the
  // warp's best is two single-instruction reductions, the key's max and then the lowest expert holding it
  // (a butterfly of shuffles over (v, e) pairs: 23.2 against 14.1 us on an H200). Every lane ends a pass
  // with the pick.
  uint32_t pk = UINT32_MAX;
  int pe = -1, my_e = 0;
  float my_v = -1.f, sel = 0.f;
  for (int j = 0; j < k; ++j) {
    uint32_t bk = 0;
    int be = INT32_MAX;
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const int e = lane + 32 * i;
      const uint32_t key = e < E && v[i] == v[i] ? __float_as_uint(v[i]) + 1u : 0u;
      const bool eligible = key != 0u && (key < pk || (key == pk && e > pe));
      if (eligible && (key > bk || (key == bk && e < be))) bk = key, be = e;
    }
    const uint32_t wk = __reduce_max_sync(0xffffffffu, bk);
    const int we = int(__reduce_min_sync(0xffffffffu, bk == wk ? uint32_t(be) : uint32_t(INT32_MAX)));
    // Nothing eligible (NaN logits): a valid expert id with weight -1, and no later pass picks anything.
    const float bv = wk != 0u ? __uint_as_float(wk - 1u) : -1.f;
    pk = wk, pe = wk != 0u ? we : j;
    sel += bv;
    if (lane == j) my_v = bv, my_e = pe;
  }
  z_sum += l * l;
  if (lane == 0) lse[t] = l;
  if (lane >= k) return -1;
  weights[int64_t(t) * k + lane] = renormalize ? my_v / sel : my_v;
  experts[int64_t(t) * k + lane] = my_e;
  return my_e;
}

// Grid-stride warps over tokens. Block b's assignment counts go to count_partials[b, :] (E of them) and
// its column sums of [probs | lse^2] to sum_partials[b, :] (E + 1): each warp sums its tokens in order,
// then the block adds its warps in order. The grid is a function of N alone (not of the GPU's SM count),
// so the sums' order is too.
template <int V>
__global__ void __launch_bounds__(kTopkWarps * 32)
    router_topk_kernel(const float* __restrict__ logits, int N, int E, int k, bool renormalize,
                       float* __restrict__ probs, float* __restrict__ lse, float* __restrict__ weights,
                       int32_t* __restrict__ experts, int32_t* __restrict__ count_partials,
                       float* __restrict__ sum_partials) {
  // Dynamic shared memory, sized for E: the block's counts [E], then the warps' sums [kTopkWarps][E + 1].
  extern __shared__ float topk_smem[];
  int* block_counts = reinterpret_cast<int*>(topk_smem);
  float* warp_sums = topk_smem + E;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int e = threadIdx.x; e < E; e += blockDim.x) block_counts[e] = 0;
  __syncthreads();
  float p_sums[V], z_sum = 0.f;
#pragma unroll
  for (int i = 0; i < V; ++i) p_sums[i] = 0.f;
  for (int t = blockIdx.x * kTopkWarps + warp; t < N; t += gridDim.x * kTopkWarps) {
    const int e = route_token<V>(logits, t, E, k, renormalize, probs, lse, weights, experts, p_sums, z_sum);
    if (e >= 0) atomicAdd(&block_counts[e], 1);
  }
#pragma unroll
  for (int i = 0; i < V; ++i)
    if (lane + 32 * i < E) warp_sums[warp * (E + 1) + lane + 32 * i] = p_sums[i];
  if (lane == 0) warp_sums[warp * (E + 1) + E] = z_sum;
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x) count_partials[int64_t(blockIdx.x) * E + e] = block_counts[e];
  for (int c = threadIdx.x; c <= E; c += blockDim.x) {
    float total = 0.f;
#pragma unroll
    for (int w = 0; w < kTopkWarps; ++w) total += warp_sums[w * (E + 1) + c];
    sum_partials[int64_t(blockIdx.x) * (E + 1) + c] = total;
  }
}

// One warp per column: sums[c] = the sum over blocks of partials[:, c] and, for c < E, counts[c] the
// sum of the count partials. Lanes stride the blocks, then a warp sum: a fixed order.
__global__ void router_finalize_kernel(const float* __restrict__ partials, int blocks, int C,
                                       const int32_t* __restrict__ count_partials, float* __restrict__ sums,
                                       int32_t* __restrict__ counts) {
  const int c = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (c >= C) return;  // warp-uniform
  float s = 0.f;
  for (int b = lane; b < blocks; b += 32) s += partials[int64_t(b) * C + c];
  s = warp_sum(s);
  if (lane == 0) sums[c] = s;
  if (c == C - 1) return;  // column E is the z-loss sum: no count
  int n = 0;
  for (int b = lane; b < blocks; b += 32) n += count_partials[int64_t(b) * (C - 1) + c];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) n += __shfl_xor_sync(0xffffffffu, n, o);
  if (lane == 0) counts[c] = n;
}

// One warp: balance = bw E sum_e counts[e] P_e / (N k), P_e = sums[e] / N; z = zw sums[E] / N.
__global__ void router_losses_kernel(const int32_t* __restrict__ counts, const float* __restrict__ sums, int N, int E,
                                     int k, float balance_weight, float z_weight, float* __restrict__ balance,
                                     float* __restrict__ z) {
  float acc = 0.f;
  for (int e = threadIdx.x; e < E; e += 32) acc += float(counts[e]) * sums[e];
  acc = warp_sum(acc);
  if (threadIdx.x == 0) {
    balance[0] = balance_weight * float(E) * acc / (float(N) * float(k) * float(N));
    z[0] = z_weight * sums[E] / float(N);
  }
}

// One warp per token; lane j < k holds selected slot j, lanes stride the row for the rest.
__global__ void __launch_bounds__(kWarps * 32)
    router_backward_kernel(const float* __restrict__ probs, const float* __restrict__ lse,
                           const float* __restrict__ weights, const int32_t* __restrict__ experts,
                           const int32_t* __restrict__ counts, const float* __restrict__ dweights,
                           const float* __restrict__ dbalance, const float* __restrict__ dz, int N, int E, int k,
                           bool renormalize, float balance_weight, float z_weight, float* __restrict__ dlogits,
                           bool accumulate) {
  const int lane = threadIdx.x & 31, t = blockIdx.x * kWarps + (threadIdx.x >> 5);
  if (t >= N) return;  // warp-uniform
  const float bal_scale =
      dbalance ? balance_weight * float(E) / (float(N) * float(N) * float(k)) * dbalance[0] : 0.f;
  const float z_scale = dz ? 2.f * z_weight / float(N) * dz[0] * lse[t] : 0.f;
  const float* p = probs + int64_t(t) * E;
  int ex = -1;
  float dsel = 0.f, psel = 0.f, gw = 0.f;
  if (lane < k) {
    ex = experts[int64_t(t) * k + lane];
    psel = p[ex];
    if (dweights) {
      dsel = dweights[int64_t(t) * k + lane];
      gw = dsel * weights[int64_t(t) * k + lane];
    }
  }
  const float sel = warp_sum(psel), gdotw = warp_sum(gw);
  if (renormalize && lane < k) dsel = (dsel - gdotw) / sel;
  // s = sum_e p_e dp_e with dp_e = bal_scale counts[e] + (the selected slots' terms).
  float s = psel * dsel;
  if (bal_scale != 0.f)
    for (int e = lane; e < E; e += 32) s += p[e] * (bal_scale * float(counts[e]));
  s = warp_sum(s);
  float* g = dlogits + int64_t(t) * E;
  for (int e0 = 0; e0 < E; e0 += 32) {
    const int e = e0 + lane;
    float dp = e < E ? bal_scale * float(counts[e]) : 0.f;
    for (int j = 0; j < k; ++j) {
      const int ej = __shfl_sync(0xffffffffu, ex, j);
      const float dj = __shfl_sync(0xffffffffu, dsel, j);
      if (ej == e) dp += dj;
    }
    if (e < E) {
      const float v = p[e] * (dp - s) + z_scale * p[e];
      g[e] = accumulate ? g[e] + v : v;
    }
  }
}

}  // namespace

void moe_router_forward(const Tensor& logits, const ops::MoeRouterOptions& o, const Tensor& probs, const Tensor& lse,
                        const Tensor& weights, const Tensor& experts, const Tensor& counts,
                        const Tensor& balance_loss, const Tensor& z_loss) {
  const int N = int(logits.dim(0)), E = int(logits.dim(1)), k = int(o.top_k);
  Arena& arena = arena_for(logits.device());
  const int blocks = int(std::clamp<int64_t>(ceil_div(N, kTopkWarps), 1, kTopkBlocks));
  const size_t smem = size_t(E + kTopkWarps * (E + 1)) * sizeof(float);  // 36 KiB at 1024 experts
  auto* sum_partials = static_cast<float*>(arena.alloc_bytes(size_t(blocks) * size_t(E + 1) * sizeof(float)));
  auto* count_partials = static_cast<int32_t*>(arena.alloc_bytes(size_t(blocks) * size_t(E) * sizeof(int32_t)));
  auto* sums = static_cast<float*>(arena.alloc_bytes(size_t(E + 1) * sizeof(float)));
  auto topk = [&](auto per_lane) {
    router_topk_kernel<decltype(per_lane)::value><<<blocks, kTopkWarps * 32, smem, stream()>>>(
        logits.data_as<float>(), N, E, k, o.renormalize, probs.data_as<float>(), lse.data_as<float>(),
        weights.data_as<float>(), experts.data_as<int32_t>(), count_partials, sum_partials);
  };
  static_assert(ops::kMoeMaxExperts <= 32 * 32, "at most 32 router values per lane");
  using std::integral_constant;
  if (E <= 32) topk(integral_constant<int, 1>{});
  else if (E <= 64) topk(integral_constant<int, 2>{});
  else if (E <= 128) topk(integral_constant<int, 4>{});
  else if (E <= 256) topk(integral_constant<int, 8>{});
  else if (E <= 512) topk(integral_constant<int, 16>{});
  else topk(integral_constant<int, 32>{});
  UM_CUDA_LAUNCHED();
  router_finalize_kernel<<<ceil_div(E + 1, 8), 256, 0, stream()>>>(sum_partials, blocks, E + 1, count_partials, sums,
                                                                      counts.data_as<int32_t>());
  UM_CUDA_LAUNCHED();
  router_losses_kernel<<<1, 32, 0, stream()>>>(counts.data_as<int32_t>(), sums, N, E, k, float(o.balance_weight),
                                               float(o.z_weight), balance_loss.data_as<float>(),
                                               z_loss.data_as<float>());
  UM_CUDA_LAUNCHED();
}

void moe_router_backward(const ops::MoeRouterOptions& o, const Tensor& probs, const Tensor& lse, const Tensor& weights,
                         const Tensor& experts, const Tensor& counts, const Tensor& dweights, const Tensor& dbalance,
                         const Tensor& dz, const GradSlot& dlogits) {
  const int N = int(probs.dim(0)), E = int(probs.dim(1)), k = int(o.top_k);
  router_backward_kernel<<<ceil_div(N, kWarps), kWarps * 32, 0, stream()>>>(
      probs.data_as<float>(), lse.data_as<float>(), weights.data_as<float>(), experts.data_as<int32_t>(),
      counts.data_as<int32_t>(), dweights.defined() ? dweights.data_as<float>() : nullptr,
      dbalance.defined() ? dbalance.data_as<float>() : nullptr, dz.defined() ? dz.data_as<float>() : nullptr, N, E, k,
      o.renormalize, float(o.balance_weight), float(o.z_weight), dlogits.grad.data_as<float>(), dlogits.accumulate);
  UM_CUDA_LAUNCHED();
}

}  // namespace um::cuda
