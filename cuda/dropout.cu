// CUDA dropout: the mask is recomputed per element from ops::dropout_keep, the same integer function
// the CPU reference evaluates, so the two devices drop exactly the same elements.
#include "ultramem/ops/dropout.h"

#include "common.cuh"

namespace um::cuda {
namespace {

template <typename T>
__global__ void dropout_kernel(const T* __restrict__ src, T* __restrict__ dst, int64_t n, uint64_t seed,
                               uint64_t offset, uint64_t threshold, float scale, bool accumulate) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float v = ops::dropout_keep(seed, offset + uint64_t(i), threshold) ? to_f32(src[i]) * scale : 0.f;
    dst[i] = from_f32<T>(accumulate ? to_f32(dst[i]) + v : v);
  }
}

}  // namespace

void dropout_apply(const Tensor& src, float p, uint64_t seed, uint64_t offset, const Tensor& dst, bool accumulate) {
  const int64_t n = src.numel();
  if (n == 0) return;
  const float scale = 1.f / (1.f - p);  // the CPU's T(1) / (T(1) - T(p)) for T = float
  const unsigned grid = std::min<unsigned>(ceil_div(n, 256), unsigned(sm_count()) * 16u);
  UM_DISPATCH_ACT(src.dtype(), T, {
    dropout_kernel<T><<<grid, 256, 0, stream()>>>(src.data_as<T>(), dst.data_as<T>(), n, seed, offset,
                                                   ops::dropout_threshold(p), scale, accumulate);
  });
  UM_CUDA_LAUNCHED();
}

}  // namespace um::cuda
