// Device math of the activation family (fp32), shared by the kernels that fuse an activation:
// GPT-2's tanh GELU, the sigmoid of SiLU and SwiGLU's silu(gate) * up (formulas in
// include/ultramem/ops/activation.h).
#pragma once
#include <cuda_runtime.h>

namespace um::cuda {

constexpr float kGeluScale = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kGeluCubic = 0.044715f;

__device__ __forceinline__ float gelu_value(float x) {
  return 0.5f * x * (1.f + tanhf(kGeluScale * (x + kGeluCubic * x * x * x)));
}
__device__ __forceinline__ float gelu_derivative(float x) {
  float t = tanhf(kGeluScale * (x + kGeluCubic * x * x * x));
  return 0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * kGeluScale * (1.f + 3.f * kGeluCubic * x * x);
}
// ex2 and rcp straight from the SFU in their flush-to-zero forms (a few ulp, far below bf16's
// resolution), without __expf's and __fdividef's range fix-ups: the SwiGLU backward also runs in the sm90
// dx GEMM's epilogue, where the tensor cores wait on this arithmetic. e^-g underflowing to 0 gives 1,
// overflowing to inf gives 0, as they should (test "silu_mul CUDA matches CPU at extreme gates").
__device__ __forceinline__ float sigmoid(float g) {
  float e, r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(g * -1.4426950408889634f));
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(1.f + e));
  return r;
}
// SwiGLU's product silu(gate) * up, and its gradients for an upstream d: d/dgate = d up s (1 + g (1 - s)),
// d/dup = d g s, s = sigmoid(gate).
__device__ __forceinline__ float silu_mul_value(float g, float u) { return g * sigmoid(g) * u; }
__device__ __forceinline__ void silu_mul_grads(float g, float u, float d, float& dgate, float& dup) {
  const float s = sigmoid(g);
  dgate = d * u * s * (1.f + g * (1.f - s)), dup = d * g * s;
}
// Both at once (one sigmoid): the value silu(g) u and the gradients for upstream d.
__device__ __forceinline__ void silu_mul_value_grads(float g, float u, float d, float& value, float& dgate,
                                                     float& dup) {
  const float s = sigmoid(g);
  value = g * s * u, dgate = d * u * s * (1.f + g * (1.f - s)), dup = d * g * s;
}

}  // namespace um::cuda
