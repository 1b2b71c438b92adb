// Elementwise op family: residual add, per-row scaling, dtype cast, gradient accumulation, reshape.
// Every op family follows this layout:
//   um::ops   autograd-level functions (record a tape node) + kernel-level entry points that
//             dispatch on the tensors' device (src/ops/<family>.cpp)
//   um::cpu   reference kernels, f32 and f64 (src/cpu/<family>.cpp)
//   um::cuda  GPU kernels, f32 and bf16 activations (cuda/<family>.cu)
#pragma once
#include "ultramem/core/tape.h"
#include "ultramem/core/tensor.h"

namespace um::ops {

// y = a + b (same shape and dtype).
Tensor add(const Tensor& a, const Tensor& b);
// y[r, :] = s[r] x[r, :], x [rows, cols], s [rows] in x's dtype (on the GPU f32, whatever x's). Backward:
// dx = s dy, ds[r] = sum_c dy[r, c] x[r, c] (fp32 on the GPU, one warp per row: a fixed order).
Tensor scale_rows(const Tensor& x, const Tensor& s);
// y = x converted to `dtype`; the gradient is converted back.
Tensor cast(const Tensor& x, DType dtype);
// Same memory, another shape; the gradient flows back unchanged.
Tensor reshape(const Tensor& x, const Shape& shape);

// Kernel-level entry points.
void add_forward(const Tensor& a, const Tensor& b, const Tensor& y);
void scale_rows_forward(const Tensor& x, const Tensor& s, const Tensor& y);
void scale_rows_backward(const Tensor& x, const Tensor& s, const Tensor& dy, const GradSlot& dx, const GradSlot& ds);
void cast_forward(const Tensor& src, const Tensor& dst);
// dst = (accumulate ? dst : 0) + src, converting src's dtype to dst's.
void accumulate(const Tensor& dst, const Tensor& src, bool accumulate);
// Adds `g` into the gradient slot (see tape.h).
inline void accumulate_grad(const GradSlot& slot, const Tensor& g) {
  if (slot) accumulate(slot.grad, g, slot.accumulate);
}

}  // namespace um::ops

namespace um::cpu {
void add_forward(const Tensor& a, const Tensor& b, const Tensor& y);
void scale_rows_forward(const Tensor& x, const Tensor& s, const Tensor& y);
void scale_rows_backward(const Tensor& x, const Tensor& s, const Tensor& dy, const GradSlot& dx, const GradSlot& ds);
void cast_forward(const Tensor& src, const Tensor& dst);
void accumulate(const Tensor& dst, const Tensor& src, bool accumulate);
}  // namespace um::cpu

namespace um::cuda {
void add_forward(const Tensor& a, const Tensor& b, const Tensor& y);
void scale_rows_forward(const Tensor& x, const Tensor& s, const Tensor& y);
void scale_rows_backward(const Tensor& x, const Tensor& s, const Tensor& dy, const GradSlot& dx, const GradSlot& ds);
void cast_forward(const Tensor& src, const Tensor& dst);
void accumulate(const Tensor& dst, const Tensor& src, bool accumulate);
}  // namespace um::cuda
