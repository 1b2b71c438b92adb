// Elementwise op family: residual add, dtype cast, gradient accumulation, reshape.
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
// y = x converted to `dtype`; the gradient is converted back.
Tensor cast(const Tensor& x, DType dtype);
// Same memory, another shape; the gradient flows back unchanged.
Tensor reshape(const Tensor& x, const Shape& shape);

// Kernel-level entry points.
void add_forward(const Tensor& a, const Tensor& b, const Tensor& y);
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
void cast_forward(const Tensor& src, const Tensor& dst);
void accumulate(const Tensor& dst, const Tensor& src, bool accumulate);
}  // namespace um::cpu

namespace um::cuda {
void add_forward(const Tensor& a, const Tensor& b, const Tensor& y);
void cast_forward(const Tensor& src, const Tensor& dst);
void accumulate(const Tensor& dst, const Tensor& src, bool accumulate);
}  // namespace um::cuda
