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

// Per-row scaling: s is f32 whatever x's dtype. The backward runs one warp per row (lanes stride the
// columns), so ds[r] is a warp sum in a fixed order.
template <typename T>
__global__ void scale_rows_kernel(const T* __restrict__ x, const float* __restrict__ s, T* __restrict__ y,
                                  int64_t rows, int64_t cols) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = from_f32<T>(s[i / cols] * to_f32(x[i]));
}

template <typename T>
__global__ void scale_rows_backward_kernel(const T* __restrict__ x, const float* __restrict__ s,
                                           const T* __restrict__ dy, T* __restrict__ dx, bool acc_dx,
                                           float* __restrict__ ds, bool acc_ds, int64_t rows, int64_t cols) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x >> 5);
  for (int64_t r = blockIdx.x * int64_t(blockDim.x >> 5) + (threadIdx.x >> 5); r < rows; r += warps) {
    float dot = 0.f;
    const float sr = s[r];
    for (int64_t c = lane; c < cols; c += 32) {
      const int64_t i = r * cols + c;
      const float g = to_f32(dy[i]);
      dot += g * to_f32(x[i]);
      if (dx) dx[i] = from_f32<T>((acc_dx ? to_f32(dx[i]) : 0.f) + sr * g);
    }
    dot = warp_sum(dot);
    if (ds && lane == 0) ds[r] = acc_ds ? ds[r] + dot : dot;
  }
}

static unsigned grid_for(int64_t n) { return std::min<unsigned>(ceil_div(n, 256), unsigned(sm_count()) * 16u); }

void scale_rows_forward(const Tensor& x, const Tensor& s, const Tensor& y) {
  const int64_t n = x.numel();
  if (!n) return;
  UM_DISPATCH_ACT(x.dtype(), T, {
    scale_rows_kernel<<<grid_for(n), 256, 0, stream()>>>(x.data_as<T>(), s.data_as<float>(), y.data_as<T>(), x.dim(0),
                                                         x.dim(1));
  });
  UM_CUDA_LAUNCHED();
}

void scale_rows_backward(const Tensor& x, const Tensor& s, const Tensor& dy, const GradSlot& dx, const GradSlot& ds) {
  const int64_t rows = x.dim(0);
  if (!rows || !x.numel()) return;
  UM_DISPATCH_ACT(x.dtype(), T, {
    scale_rows_backward_kernel<<<unsigned(std::min<int64_t>(ceil_div(rows, 8), int64_t(sm_count()) * 16)), 256, 0, stream()>>>(
        x.data_as<T>(), s.data_as<float>(), dy.data_as<T>(), dx ? dx.grad.data_as<T>() : nullptr, dx.accumulate,
        ds ? ds.grad.data_as<float>() : nullptr, ds.accumulate, rows, x.dim(1));
  });
  UM_CUDA_LAUNCHED();
}

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
