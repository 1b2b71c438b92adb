#include "ultramem/ops/elementwise.h"

#include "common.cuh"

namespace um::cuda {

template <typename T>
__global__ void add_kernel(const T* a, const T* b, T* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = from_f32<T>(to_f32(a[i]) + to_f32(b[i]));
}

template <typename S, typename D>
__global__ void accumulate_kernel(D* dst, const S* src, int64_t n, bool acc) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = from_f32<D>((acc ? to_f32(dst[i]) : 0.f) + to_f32(src[i]));
}

static unsigned grid_for(int64_t n) { return std::min<unsigned>(ceil_div(n, 256), 132u * 16u); }

void add_forward(const Tensor& a, const Tensor& b, const Tensor& y) {
  int64_t n = a.numel();
  if (!n) return;
  UM_DISPATCH_ACT(a.dtype(), T, {
    add_kernel<<<grid_for(n), 256, 0, stream()>>>(a.data_as<T>(), b.data_as<T>(), y.data_as<T>(), n);
  });
  UM_CUDA_LAUNCHED();
}

void accumulate(const Tensor& dst, const Tensor& src, bool acc) {
  int64_t n = dst.numel();
  if (!n) return;
  UM_DISPATCH_ACT(src.dtype(), S, {
    UM_DISPATCH_ACT(dst.dtype(), D, {
      accumulate_kernel<<<grid_for(n), 256, 0, stream()>>>(dst.data_as<D>(), src.data_as<S>(), n, acc);
    });
  });
  UM_CUDA_LAUNCHED();
}

void cast_forward(const Tensor& src, const Tensor& dst) { accumulate(dst, src, false); }

}  // namespace um::cuda
