// CUDA key-balance loss. Forward: one warp per (side, token x head) row computes the pre-selection
// scores and their softmax into y; the picks are counted with integer atomics (order-free, so
// deterministic); one thread per (side, key) sums its y column over all rows in row order. Backward:
// one warp per row, g = sum_j y_j f_j by the fixed xor butterfly, then d scores for every rank.
#include "ultramem/ops/memory_balance.h"

#include "common.cuh"
#include "ultramem/core/arena.h"

namespace um::cuda {
namespace {

constexpr int kWarps = 8;  // warps per block of the row kernels

// y[side, row, i] = softmax_i(sum_q w[q] scores[t, h, side, q, i]), row = t*H + h.
__global__ void balance_softmax_kernel(const float* __restrict__ scores, const float* __restrict__ u,
                                       const float* __restrict__ v, int64_t TH, int H, int r, int n,
                                       float* __restrict__ y) {
  const int lane = threadIdx.x & 31;
  const int64_t job = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (job >= 2 * TH) return;
  const int side = int(job / TH);
  const int64_t row = job - side * TH;
  const int h = int(row % H);
  const float* w = side == 0 ? u : v;
  const float* s = scores + ((row * 2 + side) * r) * int64_t(n);
  float* yr = y + (side * TH + row) * int64_t(n);
  float mx = -INFINITY;
  for (int i = lane; i < n; i += 32) {
    float a = 0.f;
    for (int q = 0; q < r; ++q) a += (w ? w[h * r + q] : 1.f) * s[int64_t(q) * n + i];
    yr[i] = a;
    mx = fmaxf(mx, a);
  }
  mx = warp_max(mx);
  float z = 0.f;
  for (int i = lane; i < n; i += 32) {
    const float e = __expf(yr[i] - mx);
    yr[i] = e;
    z += e;
  }
  const float inv = 1.f / warp_sum(z);
  for (int i = lane; i < n; i += 32) yr[i] *= inv;
}

__global__ void balance_count_kernel(const int32_t* __restrict__ rows, int64_t TH, int knn, int n,
                                     int32_t* __restrict__ counts) {
  const int64_t total = TH * 2 * knn;
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < total; k += int64_t(gridDim.x) * blockDim.x) {
    const int side = int((k / knn) % 2);
    const int32_t i = rows[k];
    if (i >= 0 && i < n) atomicAdd(&counts[side * n + i], 1);
  }
}

// p[side, i] = mean over rows of y[side, row, i] (summed in row order); f[side, i] = counts / (TH knn).
__global__ void balance_columns_kernel(const float* __restrict__ y, const int32_t* __restrict__ counts, int64_t TH,
                                       int knn, int n, float* __restrict__ p, float* __restrict__ f) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= 2 * n) return;
  const int side = c / n, i = c - side * n;
  const float* col = y + side * TH * int64_t(n) + i;
  float s = 0.f;
  for (int64_t row = 0; row < TH; ++row) s += col[row * n];
  p[c] = s / float(TH);
  f[c] = float(counts[c]) / float(TH * knn);
}

__global__ void balance_backward_kernel(const float* __restrict__ u, const float* __restrict__ v,
                                        const float* __restrict__ y, const float* __restrict__ f, int64_t TH, int H,
                                        int r, int n, float c, float* __restrict__ ds, bool accumulate) {
  const int lane = threadIdx.x & 31;
  const int64_t job = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (job >= 2 * TH) return;
  const int side = int(job / TH);
  const int64_t row = job - side * TH;
  const int h = int(row % H);
  const float* w = side == 0 ? u : v;
  const float* yr = y + (side * TH + row) * int64_t(n);
  const float* fr = f + side * n;
  float g = 0.f;
  for (int i = lane; i < n; i += 32) g += yr[i] * fr[i];
  g = warp_sum(g);
  for (int q = 0; q < r; ++q) {
    const float wq = c * (w ? w[h * r + q] : 1.f);
    float* out = ds + ((row * 2 + side) * r + q) * int64_t(n);
    for (int i = lane; i < n; i += 32) {
      const float d = wq * yr[i] * (fr[i] - g);
      out[i] = accumulate ? out[i] + d : d;
    }
  }
}

}  // namespace

void memory_key_balance_forward(const Tensor& scores, const Tensor& u, const Tensor& v, const Tensor& rows,
                                const Tensor& y, const Tensor& f, const Tensor& p) {
  const int64_t TH = scores.dim(0) * scores.dim(1);
  const int H = int(scores.dim(1)), r = int(scores.dim(3)), n = int(scores.dim(4)), knn = int(rows.dim(3));
  if (TH == 0) return;
  const float* up = u.defined() ? u.data_as<float>() : nullptr;
  const float* vp = v.defined() ? v.data_as<float>() : nullptr;
  balance_softmax_kernel<<<ceil_div(2 * TH, kWarps), kWarps * 32, 0, stream()>>>(scores.data_as<float>(), up, vp, TH,
                                                                                H, r, n, y.data_as<float>());
  UM_CUDA_LAUNCHED();
  Tensor counts = alloc_activation({2, int64_t(n)}, DType::i32, scores.device());
  UM_CUDA(cudaMemsetAsync(counts.data(), 0, counts.nbytes(), stream()));
  balance_count_kernel<<<unsigned(std::min<int64_t>(ceil_div(TH * 2 * knn, 256), 4096)), 256, 0, stream()>>>(
      rows.data_as<int32_t>(), TH, knn, n, counts.data_as<int32_t>());
  UM_CUDA_LAUNCHED();
  balance_columns_kernel<<<ceil_div(2 * n, 128), 128, 0, stream()>>>(y.data_as<float>(), counts.data_as<int32_t>(), TH,
                                                                     knn, n, p.data_as<float>(), f.data_as<float>());
  UM_CUDA_LAUNCHED();
}

void memory_key_balance_backward(const Tensor& u, const Tensor& v, const Tensor& y, const Tensor& f, double scale,
                                 const Tensor& dscores, bool accumulate) {
  const int64_t TH = dscores.dim(0) * dscores.dim(1);
  const int H = int(dscores.dim(1)), r = int(dscores.dim(3)), n = int(dscores.dim(4));
  if (TH == 0) return;
  const float c = float(scale * double(n) / double(TH));
  balance_backward_kernel<<<ceil_div(2 * TH, kWarps), kWarps * 32, 0, stream()>>>(
      u.defined() ? u.data_as<float>() : nullptr, v.defined() ? v.data_as<float>() : nullptr, y.data_as<float>(),
      f.data_as<float>(), TH, H, r, n, c, dscores.data_as<float>(), accumulate);
  UM_CUDA_LAUNCHED();
}

}  // namespace um::cuda
