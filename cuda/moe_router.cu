// CUDA MoE router. One thread per token computes its softmax (two passes over the row for max and
// sum, fp32 expf), keeps the k largest probabilities in registers (an unrolled insertion network of
// kMaxK slots; strict comparisons, so equal probabilities keep the lower expert first, as the CPU)
// and counts assignments with integer atomics (order-independent, so deterministic). P_e and the
// z-loss sum are column sums in a fixed order (one block per expert, block_sum), and one warp
// finishes both losses: no float atomics anywhere, bitwise reproducible.
#include "ultramem/ops/moe_router.h"

#include "common.cuh"
#include "ultramem/core/arena.h"

namespace um::cuda {
namespace {

constexpr int kMaxK = int(ops::kMoeMaxTopK);
constexpr int kThreads = 128;

__global__ void __launch_bounds__(kThreads)
    router_topk_kernel(const float* __restrict__ logits, int N, int E, int k, bool renormalize,
                       float* __restrict__ probs, float* __restrict__ lse, float* __restrict__ weights,
                       int32_t* __restrict__ experts, int32_t* __restrict__ counts, float* __restrict__ z_terms) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= N) return;
  const float* x = logits + int64_t(t) * E;
  float* p = probs + int64_t(t) * E;
  float m = x[0];
  for (int e = 1; e < E; ++e) m = fmaxf(m, x[e]);
  float s = 0.f;
  for (int e = 0; e < E; ++e) s += expf(x[e] - m);
  const float l = m + logf(s);
  lse[t] = l;
  z_terms[t] = l * l;
  float tv[kMaxK];
  int ti[kMaxK];
#pragma unroll
  for (int i = 0; i < kMaxK; ++i) tv[i] = -1.f, ti[i] = i;  // probabilities are >= 0: any one displaces -1
  for (int e = 0; e < E; ++e) {
    float v = expf(x[e] - m) / s;
    p[e] = v;
    int id = e;
    bool inserted = false;
#pragma unroll
    for (int i = 0; i < kMaxK; ++i) {
      if (i < k && (inserted || v > tv[i])) {  // after the insertion point every slot shifts down by one
        const float tvi = tv[i];
        const int tii = ti[i];
        tv[i] = v, ti[i] = id;
        v = tvi, id = tii;
        inserted = true;
      }
    }
  }
  float sel = 0.f;
#pragma unroll
  for (int i = 0; i < kMaxK; ++i)
    if (i < k) sel += tv[i];
#pragma unroll
  for (int i = 0; i < kMaxK; ++i) {
    if (i < k) {
      // tv[i] == -1 only for NaN logits (no comparison succeeded): keep a valid expert id.
      weights[int64_t(t) * k + i] = renormalize ? tv[i] / sel : tv[i];
      experts[int64_t(t) * k + i] = ti[i];
      atomicAdd(&counts[ti[i]], 1);
    }
  }
}

// Block c < E: sum over tokens of probs[:, c]; block E: sum of z_terms. Fixed order (block_sum).
__global__ void __launch_bounds__(256)
    router_column_sums_kernel(const float* __restrict__ probs, const float* __restrict__ z_terms, int N, int E,
                              float* __restrict__ sums) {
  const int c = blockIdx.x;
  float s = 0.f;
  if (c < E) {
    for (int t = threadIdx.x; t < N; t += blockDim.x) s += probs[int64_t(t) * E + c];
  } else {
    for (int t = threadIdx.x; t < N; t += blockDim.x) s += z_terms[t];
  }
  s = block_sum(s);
  if (threadIdx.x == 0) sums[c] = s;
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

__global__ void __launch_bounds__(kThreads)
    router_backward_kernel(const float* __restrict__ probs, const float* __restrict__ lse,
                           const float* __restrict__ weights, const int32_t* __restrict__ experts,
                           const int32_t* __restrict__ counts, const float* __restrict__ dweights,
                           const float* __restrict__ dbalance, const float* __restrict__ dz, int N, int E, int k,
                           bool renormalize, float balance_weight, float z_weight, float* __restrict__ dlogits,
                           bool accumulate) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= N) return;
  const float bal_scale =
      dbalance ? balance_weight * float(E) / (float(N) * float(N) * float(k)) * dbalance[0] : 0.f;
  const float z_scale = dz ? 2.f * z_weight / float(N) * dz[0] * lse[t] : 0.f;
  const float* p = probs + int64_t(t) * E;
  int ex[kMaxK];
  float dsel[kMaxK];
  float sel = 0.f, gdotw = 0.f;
#pragma unroll
  for (int i = 0; i < kMaxK; ++i) {
    ex[i] = -1, dsel[i] = 0.f;
    if (i < k) {
      ex[i] = experts[int64_t(t) * k + i];
      if (dweights) {
        dsel[i] = dweights[int64_t(t) * k + i];
        gdotw += dsel[i] * weights[int64_t(t) * k + i];
      }
      sel += p[ex[i]];
    }
  }
  if (renormalize) {
#pragma unroll
    for (int i = 0; i < kMaxK; ++i)
      if (i < k) dsel[i] = (dsel[i] - gdotw) / sel;
  }
  // s = sum_e p_e dp_e with dp_e = bal_scale counts[e] + (the selected slots' terms).
  float s = 0.f;
  if (bal_scale != 0.f)
    for (int e = 0; e < E; ++e) s += p[e] * (bal_scale * float(counts[e]));
#pragma unroll
  for (int i = 0; i < kMaxK; ++i)
    if (i < k) s += p[ex[i]] * dsel[i];
  float* g = dlogits + int64_t(t) * E;
  for (int e = 0; e < E; ++e) {
    float dp = bal_scale * float(counts[e]);
#pragma unroll
    for (int i = 0; i < kMaxK; ++i)
      if (i < k && ex[i] == e) dp += dsel[i];
    const float v = p[e] * (dp - s) + z_scale * p[e];
    g[e] = accumulate ? g[e] + v : v;
  }
}

}  // namespace

void moe_router_forward(const Tensor& logits, const ops::MoeRouterOptions& o, const Tensor& probs, const Tensor& lse,
                        const Tensor& weights, const Tensor& experts, const Tensor& counts,
                        const Tensor& balance_loss, const Tensor& z_loss) {
  const int N = int(logits.dim(0)), E = int(logits.dim(1)), k = int(o.top_k);
  Arena& arena = arena_for(logits.device());
  auto* z_terms = static_cast<float*>(arena.alloc_bytes(size_t(N) * sizeof(float)));
  auto* sums = static_cast<float*>(arena.alloc_bytes(size_t(E + 1) * sizeof(float)));
  UM_CUDA(cudaMemsetAsync(counts.data(), 0, counts.nbytes(), stream()));
  router_topk_kernel<<<ceil_div(N, kThreads), kThreads, 0, stream()>>>(
      logits.data_as<float>(), N, E, k, o.renormalize, probs.data_as<float>(), lse.data_as<float>(),
      weights.data_as<float>(), experts.data_as<int32_t>(), counts.data_as<int32_t>(), z_terms);
  UM_CUDA_LAUNCHED();
  router_column_sums_kernel<<<E + 1, 256, 0, stream()>>>(probs.data_as<float>(), z_terms, N, E, sums);
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
  router_backward_kernel<<<ceil_div(N, kThreads), kThreads, 0, stream()>>>(
      probs.data_as<float>(), lse.data_as<float>(), weights.data_as<float>(), experts.data_as<int32_t>(),
      counts.data_as<int32_t>(), dweights.defined() ? dweights.data_as<float>() : nullptr,
      dbalance.defined() ? dbalance.data_as<float>() : nullptr, dz.defined() ? dz.data_as<float>() : nullptr, N, E, k,
      o.renormalize, float(o.balance_weight), float(o.z_weight), dlogits.grad.data_as<float>(), dlogits.accumulate);
  UM_CUDA_LAUNCHED();
}

}  // namespace um::cuda
