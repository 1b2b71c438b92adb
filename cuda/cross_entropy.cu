// Cross-entropy on the GPU. Forward: one block per row computes an online (max, sum-exp) pair per
// thread over 16-byte vector loads, combines the pairs in a fixed butterfly order and stores the
// row's logsumexp and loss; a single-block kernel then reduces the row losses in a fixed order (no
// atomics) and spots out-of-range targets, which the host checks after it. Backward: one block per
// row recomputes softmax from the saved logsumexp and writes (softmax - onehot) * dloss / count,
// reading dloss and count on the device; it may write over the logits themselves.
#include <algorithm>
#include <cstdint>

#include "ultramem/core/arena.h"
#include "ultramem/ops/cross_entropy.h"
#include "common.cuh"

namespace um::cuda {
namespace {

constexpr int kRowThreads = 512;     // per-row blocks: up to 16 warps
constexpr int kReduceThreads = 1024; // the single block reducing row losses (a power of two)

template <int W, typename T>
__device__ __forceinline__ void load_f32(const T* p, float (&out)[W]) {
  Pack<T, W> pk = load_pack<W>(p);  // W = 1: a scalar access
#pragma unroll
  for (int k = 0; k < W; ++k) out[k] = to_f32(pk.v[k]);
}

template <int W, typename T>
__device__ __forceinline__ void store_f32(T* p, const float (&in)[W]) {
  Pack<T, W> pk;
#pragma unroll
  for (int k = 0; k < W; ++k) pk.v[k] = from_f32<T>(in[k]);
  store_pack<W>(p, pk);
}

// Running softmax statistics of a set of logits: max m and sum of exp(x - m). The empty set is
// (-inf, 0).
struct SoftmaxStats {
  float m, s;
};

// Symmetric in its arguments (IEEE addition commutes), so both lanes of a butterfly step agree.
__device__ __forceinline__ SoftmaxStats combine(SoftmaxStats a, SoftmaxStats b) {
  float m = fmaxf(a.m, b.m);
  float sa = a.m == -INFINITY ? 0.f : a.s * expf(a.m - m);
  float sb = b.m == -INFINITY ? 0.f : b.s * expf(b.m - m);
  return {m, sa + sb};
}

__device__ __forceinline__ SoftmaxStats warp_combine(SoftmaxStats st) {
  for (int o = 16; o > 0; o >>= 1) {
    SoftmaxStats other{__shfl_xor_sync(0xffffffffu, st.m, o), __shfl_xor_sync(0xffffffffu, st.s, o)};
    st = combine(st, other);
  }
  return st;
}

// Block-wide combine (blockDim.x a multiple of 32); every thread returns the same value. Each warp
// reduces the per-warp partials itself, so no second barrier is needed. Call once per kernel.
__device__ __forceinline__ SoftmaxStats block_combine(SoftmaxStats st) {
  __shared__ float part_m[32], part_s[32];
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  st = warp_combine(st);
  if (lane == 0) {
    part_m[warp] = st.m;
    part_s[warp] = st.s;
  }
  __syncthreads();
  int warps = blockDim.x >> 5;
  SoftmaxStats p = lane < warps ? SoftmaxStats{part_m[lane], part_s[lane]} : SoftmaxStats{-INFINITY, 0.f};
  return warp_combine(p);
}

// Grid: one block per row. Packs cover [0, v); the last one may reach into padding columns, which
// are masked (vp % W == 0 keeps it inside the row).
template <typename T, int W>
__global__ void __launch_bounds__(kRowThreads)
    forward_kernel(const T* logits, const int32_t* targets, int64_t vp, int64_t v, float* row_loss, float* lse) {
  int64_t row = blockIdx.x;
  const T* x = logits + row * vp;
  SoftmaxStats st{-INFINITY, 0.f};
  int64_t packs = (v + W - 1) / W;
  for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
    float xv[W];
    load_f32<W>(x + p * W, xv);
    int64_t col = p * W;
    float pm = -INFINITY;
#pragma unroll
    for (int k = 0; k < W; ++k)
      if (col + k < v) pm = fmaxf(pm, xv[k]);
    if (pm > st.m) {  // rescale the running sum once per pack
      st.s = st.m == -INFINITY ? 0.f : st.s * expf(st.m - pm);
      st.m = pm;
    }
    if (st.m != -INFINITY) {
#pragma unroll
      for (int k = 0; k < W; ++k)
        if (col + k < v) st.s += expf(xv[k] - st.m);  // a NaN logit makes the sum NaN
    }
  }
  st = block_combine(st);
  if (threadIdx.x == 0) {
    float l = st.m + logf(st.s);
    lse[row] = l;
    int32_t t = targets[row];
    // Out-of-range targets get NaN here; reduce_kernel reports them and the host throws.
    row_loss[row] = t == -1 ? 0.f : (t >= 0 && t < v) ? l - to_f32(x[t]) : NAN;
  }
}

// One block: the mean of the row losses over non-ignored rows, summed in double in a fixed order,
// the count of those rows, and the first row with an out-of-range target (-1 when none).
__global__ void __launch_bounds__(kReduceThreads)
    reduce_kernel(const float* row_loss, const int32_t* targets, int64_t n, int64_t v, float* loss, int32_t* count,
                  int32_t* bad_row) {
  __shared__ double s_sum[kReduceThreads];
  __shared__ int64_t s_count[kReduceThreads], s_bad[kReduceThreads];
  double sum = 0;
  int64_t c = 0, bad = n;
  for (int64_t r = threadIdx.x; r < n; r += blockDim.x) {
    int32_t t = targets[r];
    if (t == -1) continue;
    if (t < -1 || t >= v) {
      bad = min(bad, r);
      continue;
    }
    sum += double(row_loss[r]);
    ++c;
  }
  int tid = threadIdx.x;
  s_sum[tid] = sum;
  s_count[tid] = c;
  s_bad[tid] = bad;
  __syncthreads();
  for (int h = blockDim.x / 2; h > 0; h >>= 1) {
    if (tid < h) {
      s_sum[tid] += s_sum[tid + h];
      s_count[tid] += s_count[tid + h];
      s_bad[tid] = min(s_bad[tid], s_bad[tid + h]);
    }
    __syncthreads();
  }
  if (tid == 0) {
    loss[0] = s_count[0] ? float(s_sum[0] / double(s_count[0])) : 0.f;
    count[0] = int32_t(s_count[0]);
    bad_row[0] = s_bad[0] < n ? int32_t(s_bad[0]) : -1;
  }
}

// Grid: one block per row. dlogits may alias logits (then T == G and accumulate is false): each
// pack is read before it is written, by the same thread.
template <typename T, typename G, int W>
__global__ void __launch_bounds__(kRowThreads)
    backward_kernel(const T* logits, const int32_t* targets, const float* lse, const int32_t* count,
                    const float* dloss, int64_t vp, int64_t v, G* dlogits, bool accumulate) {
  int64_t row = blockIdx.x;
  int32_t t = targets[row];
  bool ignored = t < 0;
  if (ignored && accumulate) return;  // the gradient adds nothing
  int32_t c = *count;
  float scale = c > 0 ? *dloss / float(c) : 0.f;
  float l = lse[row];
  const T* x = logits + row * vp;
  G* d = dlogits + row * vp;
  for (int64_t p = threadIdx.x; p < vp / W; p += blockDim.x) {
    int64_t col = p * W;
    float g[W];
    if (ignored) {
#pragma unroll
      for (int k = 0; k < W; ++k) g[k] = 0.f;
    } else {
      float xv[W];
      load_f32<W>(x + col, xv);
#pragma unroll
      for (int k = 0; k < W; ++k) {
        int64_t j = col + k;
        g[k] = j < v ? (expf(xv[k] - l) - (j == t ? 1.f : 0.f)) * scale : 0.f;
      }
    }
    if (accumulate) {
      float old[W];
      load_f32<W>(d + col, old);
#pragma unroll
      for (int k = 0; k < W; ++k) g[k] += old[k];
    }
    store_f32<W>(d + col, g);
  }
}

bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// Threads for a row of `packs` vector accesses: whole warps, at most kRowThreads.
unsigned row_threads(int64_t packs) {
  int64_t t = (std::max<int64_t>(packs, 1) + 31) / 32 * 32;
  return unsigned(std::min<int64_t>(t, kRowThreads));
}

}  // namespace

void cross_entropy_forward(const Tensor& logits, const Tensor& targets, int64_t valid_vocab,
                           const Tensor& row_loss, const Tensor& lse, const Tensor& loss, const Tensor& count) {
  int64_t n = logits.dim(0), vp = logits.dim(1);
  UM_CHECK(n <= INT32_MAX, "at most 2^31-1 rows of logits", n);
  if (n > 0) {
    UM_DISPATCH_ACT(logits.dtype(), T, {
      constexpr int W = 16 / sizeof(T);
      const T* x = logits.data_as<T>();
      if (vp % W == 0 && aligned(x, 16)) {
        forward_kernel<T, W><<<unsigned(n), row_threads((valid_vocab + W - 1) / W), 0, stream()>>>(
            x, targets.data_as<int32_t>(), vp, valid_vocab, row_loss.data_as<float>(), lse.data_as<float>());
      } else {
        forward_kernel<T, 1><<<unsigned(n), row_threads(valid_vocab), 0, stream()>>>(
            x, targets.data_as<int32_t>(), vp, valid_vocab, row_loss.data_as<float>(), lse.data_as<float>());
      }
    });
    UM_CUDA_LAUNCHED();
  }
  Tensor bad_row = alloc_activation(Shape{1}, DType::i32, logits.device());
  reduce_kernel<<<1, kReduceThreads, 0, stream()>>>(row_loss.data_as<float>(), targets.data_as<int32_t>(), n,
                                                   valid_vocab, loss.data_as<float>(), count.data_as<int32_t>(),
                                                   bad_row.data_as<int32_t>());
  UM_CUDA_LAUNCHED();
  // The device flag: one 4-byte read per step (the copy waits for the kernels above).
  int32_t bad = -1;
  copy_bytes(&bad, Device::cpu(), bad_row.data(), logits.device(), sizeof bad);
  if (bad >= 0) {
    int32_t t = 0;
    copy_bytes(&t, Device::cpu(), targets.data_as<int32_t>() + bad, targets.device(), sizeof t);
    throw Error(detail::concat("cross_entropy: targets row ", bad),
                detail::concat("a class in [0, ", valid_vocab, ") or -1 (ignored position)"), std::to_string(t));
  }
}

void cross_entropy_backward(const Tensor& logits, const Tensor& targets, int64_t valid_vocab, const Tensor& lse,
                            const Tensor& count, const Tensor& dloss, const Tensor& dlogits, bool accumulate) {
  int64_t n = logits.dim(0), vp = logits.dim(1);
  UM_CHECK(n <= INT32_MAX, "at most 2^31-1 rows of logits", n);
  if (n == 0) return;
  UM_DISPATCH_ACT(logits.dtype(), T, UM_DISPATCH_ACT(dlogits.dtype(), G, {
    constexpr int W = 16 / sizeof(T);
    const T* x = logits.data_as<T>();
    G* d = dlogits.data_as<G>();
    if (vp % W == 0 && aligned(x, W * sizeof(T)) && aligned(d, W * sizeof(G))) {
      backward_kernel<T, G, W><<<unsigned(n), row_threads(vp / W), 0, stream()>>>(
          x, targets.data_as<int32_t>(), lse.data_as<float>(), count.data_as<int32_t>(), dloss.data_as<float>(),
          vp, valid_vocab, d, accumulate);
    } else {
      backward_kernel<T, G, 1><<<unsigned(n), row_threads(vp), 0, stream()>>>(
          x, targets.data_as<int32_t>(), lse.data_as<float>(), count.data_as<int32_t>(), dloss.data_as<float>(),
          vp, valid_vocab, d, accumulate);
    }
  }));
  UM_CUDA_LAUNCHED();
}

}  // namespace um::cuda
