// MoE router logits: logits[N, E] = x[N, d] . W[E, d]^T, in fp32 whatever the activations' dtype (f64 when
// x is f64, for gradchecks), with the backward into x and W. The router's own op rather than
// linear(cast(x, f32), cast(W, f32)): with bf16 x and W that form copied x to f32 (and its gradient back)
// and ran three fp32 SIMT GEMMs, ~9% of a top-2-of-8 layer's kernel time on an H200. Here:
//   forward  bf16 x bf16 tensor-core GEMM with fp32 accumulation and fp32 output. x and W are bf16
//            already, so this equals the fp32 GEMM of the cast inputs up to summation order.
//   backward dlogits (fp32) is split into hi = bf16(g) and lo = bf16(g - hi), which together carry 16 of
//            its 24 mantissa bits (relative error <= 2^-17, against 2^-9 for bf16(g) alone), and
//            dx = [hi | lo] . [W ; W] (one GEMM, K = 2E, one rounding to x's dtype at the end),
//            dW = hi^T . x + lo^T . x (two fp32-output GEMMs accumulating into the master gradient).
// With f32 x and W (and on the CPU) every GEMM is plain f32 (or f64).
#pragma once
#include "ultramem/core/tape.h"
#include "ultramem/core/tensor.h"

namespace um::ops {

// x [N, d] and W [E, d] of one dtype: f32/f64 on the CPU, bf16/f32 on the GPU. Returns f32 logits
// (f64 for f64 inputs), differentiable in x and W.
Tensor moe_router_logits(const Tensor& x, const Tensor& W);

// Kernel-level entry points. logits [N, E] of the dtype above.
void moe_router_logits_forward(const Tensor& x, const Tensor& W, const Tensor& logits);
// dlogits [N, E] (logits' dtype). dx has x's dtype; dW has W's dtype or f32. Each slot may be empty and
// is written with beta = slot.accumulate.
void moe_router_logits_backward(const Tensor& x, const Tensor& W, const Tensor& dlogits, const GradSlot& dx,
                                const GradSlot& dW);

}  // namespace um::ops

namespace um::cpu {
void moe_router_logits_forward(const Tensor& x, const Tensor& W, const Tensor& logits);
void moe_router_logits_backward(const Tensor& x, const Tensor& W, const Tensor& dlogits, const GradSlot& dx,
                                const GradSlot& dW);
}  // namespace um::cpu

namespace um::cuda {
void moe_router_logits_forward(const Tensor& x, const Tensor& W, const Tensor& logits);
void moe_router_logits_backward(const Tensor& x, const Tensor& W, const Tensor& dlogits, const GradSlot& dx,
                                const GradSlot& dW);
}  // namespace um::cuda
