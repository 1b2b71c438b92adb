// Linear op family: y = act(x . W^T + b), the matmul of every projection in a transformer (qkv,
// attention output, MLP, LM head).
//
// Layout: x [..., in] (any leading dims, flattened to rows), W [out, in] (PyTorch's nn.Linear layout),
// b [out] or undefined (no bias), y [..., out]. On the GPU the matmuls run on cuBLASLt with fp32
// accumulation; bias and GELU are fused into its epilogue, and with GELU the pre-activation is saved for
// the backward pass (only then). On the CPU a cache-blocked, vectorised GEMM runs in f32 or f64.
//
// Backward, with z the pre-activation (z = y when act == none) and dz = dy * act'(z):
//   dx = dz . W          [rows, in]   activation dtype
//   dW = dz^T . x        [out, in]    f32 on the GPU (the master gradient), W's dtype on the CPU
//   db = sum_rows(dz)    [out]        likewise; a deterministic two-pass column sum
// Each gradient honours its slot's accumulate flag (beta = 1), so weight gradients add up across
// micro-batches and across tied uses (LM head + token embedding).
#pragma once
#include "ultramem/core/tape.h"
#include "ultramem/core/tensor.h"

namespace um::ops {

// gelu = GPT-2's tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
enum class Activation { none, gelu };
const char* activation_name(Activation act);

// y[..., out] = act(x[..., in] . W[out, in]^T + b[out]). x, W and b (when defined) share one dtype and
// device (f32/f64 on the CPU, f32/bf16 on the GPU: W and b are the bf16 compute copies there).
Tensor linear(const Tensor& x, const Tensor& W, const Tensor& b, Activation act = Activation::none);

// Kernel-level entry points. x is 2-d [rows, in] here (callers flatten leading dims with view()).
//
// y = act(x . W^T + b). `pre` [rows, out] receives the pre-activation x . W^T + b; pass it defined only
// when act != none and a backward pass will follow (inference skips the extra write).
void linear_forward(const Tensor& x, const Tensor& W, const Tensor& b, Activation act, const Tensor& y,
                    const Tensor& pre);

// Gradients of y = act(x . W^T + b) given dy [rows, out]. `pre` is the saved pre-activation (needed, and
// read, only when act != none). Each GradSlot may be empty (that gradient is skipped); a defined one is
// written with beta = slot.accumulate. dx has the activation dtype; dW and db are f32 or the weights'
// dtype on the GPU and the weights' dtype on the CPU. With act != none a scratch dz = dy * act'(pre) is
// taken from the arena. The order of writes is dx, dW, db.
void linear_backward(const Tensor& x, const Tensor& W, const Tensor& dy, const Tensor& pre, Activation act,
                     const GradSlot& dx, const GradSlot& dW, const GradSlot& db);

}  // namespace um::ops

namespace um::cpu {
void linear_forward(const Tensor& x, const Tensor& W, const Tensor& b, ops::Activation act, const Tensor& y,
                    const Tensor& pre);
void linear_backward(const Tensor& x, const Tensor& W, const Tensor& dy, const Tensor& pre, ops::Activation act,
                     const GradSlot& dx, const GradSlot& dW, const GradSlot& db);
// C[m, n] (row stride ldc) = (accumulate ? C : 0) + A . B with A(i, k) = a[i*a_rs + k*a_cs] and
// B(k, j) = b[k*b_rs + j*b_cs]: the strides express every transposition the linear op needs without
// copies. Cache-blocked, packed, OpenMP over row blocks; deterministic (the k order never depends on the
// thread count). Exposed for tests and benchmarks.
template <typename T>
void gemm(int64_t m, int64_t n, int64_t k, const T* a, int64_t a_rs, int64_t a_cs, const T* b, int64_t b_rs,
          int64_t b_cs, T* c, int64_t ldc, bool accumulate);
}  // namespace um::cpu

namespace um::cuda {
void linear_forward(const Tensor& x, const Tensor& W, const Tensor& b, ops::Activation act, const Tensor& y,
                    const Tensor& pre);
void linear_backward(const Tensor& x, const Tensor& W, const Tensor& dy, const Tensor& pre, ops::Activation act,
                     const GradSlot& dx, const GradSlot& dW, const GradSlot& db);
// Number of cuBLASLt plans (descriptors + heuristic result, one per distinct GEMM shape/dtype/epilogue/
// alignment) created so far; repeated shapes reuse them, so this stops growing after the first step.
size_t linear_plan_cache_size();
}  // namespace um::cuda
