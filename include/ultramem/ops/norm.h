// Normalisation op family: LayerNorm and RMSNorm over the last dimension of x [..., C], seen as
// [R, C] rows.
//
//   LayerNorm: y = (x - mean) * rstd * weight + bias,  rstd = 1 / sqrt(var + eps)  (biased variance)
//   RMSNorm:   y = x * rstd * weight,                  rstd = 1 / sqrt(mean(x^2) + eps)
//
// Statistics are computed and saved in fp32 whatever the activation dtype (f64 when the CPU runs in
// f64, so a float64 gradcheck sees exact values): the forward saves mean (LayerNorm only) and rstd
// [R] and the backward reuses them instead of recomputing.
//
// `weight` and `bias` are optional (an undefined Tensor): no weight means a scale of 1, no bias an
// offset of 0. When present they are [C] in x's dtype (the compute copy under mixed precision).
//
// Backward: with g = dy * weight and xhat = (x - mean) * rstd,
//   dx      = rstd * (g - mean_C(g) - xhat * mean_C(g * xhat))   (RMSNorm: without the mean_C(g) term)
//   dweight = sum_R(dy * xhat),  dbias = sum_R(dy)
// Weight and bias gradients are f32 on the GPU (master gradients) and the weight's dtype on the CPU;
// on the GPU they are reduced in two fixed-order passes (per row-chunk partial sums into a scratch
// buffer, then a sum over chunks), never with atomics, so they are bit-reproducible.
#pragma once
#include "ultramem/core/tape.h"
#include "ultramem/core/tensor.h"

namespace um::ops {

Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps = 1e-5f);
Tensor rms_norm(const Tensor& x, const Tensor& weight, float eps = 1e-6f);

// Kernel-level entry points. x, y [..., C]; mean, rstd [R] in the statistics dtype (f32, or f64 for
// f64 CPU tensors). weight/bias may be undefined.
void layer_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps, const Tensor& y,
                        const Tensor& mean, const Tensor& rstd);
void rms_norm_forward(const Tensor& x, const Tensor& weight, float eps, const Tensor& y, const Tensor& rstd);
// Each gradient slot may be empty (that gradient is not wanted); a non-empty slot is overwritten or,
// with slot.accumulate, added to. dx has x's dtype; dweight/dbias are f32 on the GPU.
void layer_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                         const Tensor& dy, const GradSlot& dx, const GradSlot& dweight, const GradSlot& dbias);
void rms_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& rstd, const Tensor& dy,
                       const GradSlot& dx, const GradSlot& dweight);

}  // namespace um::ops

namespace um::cpu {
void layer_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps, const Tensor& y,
                        const Tensor& mean, const Tensor& rstd);
void rms_norm_forward(const Tensor& x, const Tensor& weight, float eps, const Tensor& y, const Tensor& rstd);
void layer_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                         const Tensor& dy, const GradSlot& dx, const GradSlot& dweight, const GradSlot& dbias);
void rms_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& rstd, const Tensor& dy,
                       const GradSlot& dx, const GradSlot& dweight);
}  // namespace um::cpu

namespace um::cuda {
void layer_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps, const Tensor& y,
                        const Tensor& mean, const Tensor& rstd);
void rms_norm_forward(const Tensor& x, const Tensor& weight, float eps, const Tensor& y, const Tensor& rstd);
void layer_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                         const Tensor& dy, const GradSlot& dx, const GradSlot& dweight, const GradSlot& dbias);
void rms_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& rstd, const Tensor& dy,
                       const GradSlot& dx, const GradSlot& dweight);
}  // namespace um::cuda
