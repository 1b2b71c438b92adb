// CPU reference of the grouped linear: the packed CPU GEMM (src/cpu/linear.cpp) once per group. Both
// weight layouts are the same products with W_g's strides swapped.
#include <algorithm>
#include <cstring>

#include "src/cpu/dispatch.h"
#include "ultramem/ops/grouped_linear.h"
#include "ultramem/ops/linear.h"

namespace um::cpu {
namespace {

// W_g[j, k] (j an output, k an input) = w[j * out_stride + k * in_stride].
struct WeightStrides {
  int64_t in, out;  // the weight's widths
  int64_t out_stride, in_stride;
};
WeightStrides strides_of(const Tensor& W, ops::GroupedWeight layout) {
  const int64_t in = ops::grouped_in(W, layout), out = ops::grouped_out(W, layout);
  if (layout == ops::GroupedWeight::out_in) return {.in = in, .out = out, .out_stride = in, .in_stride = 1};
  return {.in = in, .out = out, .out_stride = 1, .in_stride = out};
}

template <typename T>
void forward_impl(const Tensor& x, const Tensor& W, const ops::RowGroups& groups, const Tensor& y,
                  ops::GroupedWeight layout) {
  const WeightStrides w = strides_of(W, layout);
  const int64_t rows = x.dim(0), in = w.in, out = w.out;
  T* py = y.data_as<T>();
  if (!groups.covers(rows)) std::memset(py, 0, size_t(rows * out) * sizeof(T));
  for (int64_t g = 0; g < groups.count(); ++g) {
    const int64_t s = groups.start[size_t(g)], n = groups.size[size_t(g)];
    if (n == 0) continue;
    // y_g[r, j] = sum_k x_g[r, k] W_g[j, k].
    gemm<T>(n, out, in, x.data_as<T>() + s * in, in, 1, W.data_as<T>() + g * out * in, w.in_stride, w.out_stride,
            py + s * out, out, false);
  }
}

template <typename T>
void backward_impl(const Tensor& x, const Tensor& W, const Tensor& dy, const ops::RowGroups& groups,
                   const GradSlot& dx, const GradSlot& dW, ops::GroupedWeight layout) {
  const WeightStrides w = strides_of(W, layout);
  const int64_t rows = x.dim(0), in = w.in, out = w.out;
  if (dx && !dx.accumulate && !groups.covers(rows)) dx.grad.zero_();
  for (int64_t g = 0; g < groups.count(); ++g) {
    const int64_t s = groups.start[size_t(g)], n = groups.size[size_t(g)];
    const T* wg = W.data_as<T>() + g * out * in;
    const T* dyg = dy.data_as<T>() + s * out;
    if (dx && n > 0)  // dx_g[r, k] = sum_j dy_g[r, j] W_g[j, k]
      gemm<T>(n, in, out, dyg, out, 1, wg, w.out_stride, w.in_stride, dx.grad.data_as<T>() + s * in, in,
              dx.accumulate);
    if (dW) {  // dW_g[j, k] = sum_r dy_g[r, j] x_g[r, k]; k = 0 rows zeroes (or keeps) dW_g
      T* dwg = dW.grad.data_as<T>() + g * out * in;
      if (n == 0) {
        if (!dW.accumulate) std::fill(dwg, dwg + out * in, T(0));
      } else if (layout == ops::GroupedWeight::out_in) {
        gemm<T>(out, in, n, dyg, 1, out, x.data_as<T>() + s * in, in, 1, dwg, in, dW.accumulate);
      } else {  // dW_g [in, out]: the transposed product
        gemm<T>(in, out, n, x.data_as<T>() + s * in, 1, in, dyg, out, 1, dwg, out, dW.accumulate);
      }
    }
  }
}

}  // namespace

void grouped_linear_forward(const Tensor& x, const Tensor& W, const ops::RowGroups& groups, const Tensor& y,
                            ops::GroupedWeight layout) {
  UM_DISPATCH_CPU(x.dtype(), T, forward_impl<T>(x, W, groups, y, layout));
}

void grouped_linear_backward(const Tensor& x, const Tensor& W, const Tensor& dy, const ops::RowGroups& groups,
                             const GradSlot& dx, const GradSlot& dW, ops::GroupedWeight layout) {
  UM_DISPATCH_CPU(x.dtype(), T, backward_impl<T>(x, W, dy, groups, dx, dW, layout));
}

}  // namespace um::cpu
