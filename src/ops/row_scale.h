// The per-row scale that several ops take beside activations x (scale_rows, swiglu_forward's row_scale,
// swiglu_expert_mlp): the MoE routing weights in row order. One rule for all of them.
#pragma once
#include <string>

#include "ultramem/core/tensor.h"

namespace um::ops {

// s [rows] on x's device: f32 on the GPU (the router's dtype, whatever x's), x's dtype on the CPU.
inline void check_row_scale(const Tensor& x, int64_t rows, const Tensor& s, const std::string& what) {
  check_shape(s, Shape{rows}, what.c_str());
  check_same_device(x, s, what.c_str());
  check_dtype(s, x.device().is_cuda() ? DType::f32 : x.dtype(),
              (what + " (f32 on the GPU, the activations' dtype on the CPU)").c_str());
}

}  // namespace um::ops
