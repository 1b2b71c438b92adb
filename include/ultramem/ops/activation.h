// Activation op family: GELU (GPT-2's tanh approximation), SwiGLU and SiLU-times-up.
//
//   gelu(x)   = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
//   swiglu(x) = silu(gate) * up,  x [..., 2h] laid out as [gate | up] along the last dimension,
//               silu(g) = g * sigmoid(g); the output is [..., h].
//   silu_mul(gate, up) = silu(gate) * up elementwise, gate and up separate tensors of one shape and
//               dtype (Memory+'s "swilu": values_proj(bag * silu(W_s x))).
// Math runs in fp32 on the GPU (f64 on an f64 CPU tensor) whatever the storage dtype.
#pragma once
#include "ultramem/core/tape.h"
#include "ultramem/core/tensor.h"

namespace um::ops {

Tensor gelu(const Tensor& x);
Tensor swiglu(const Tensor& x);
Tensor silu_mul(const Tensor& gate, const Tensor& up);

// Kernel-level entry points. dx = (accumulate ? dx : 0) + the gradient through the activation.
void gelu_forward(const Tensor& x, const Tensor& y);
void gelu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx, bool accumulate);
// x [..., 2h], y and dy [..., h], dx [..., 2h] (both halves written). A defined row_scale [rows] (x's
// dtype; f32 on the GPU) scales each output row: y[r] = row_scale[r] swiglu(x[r]) (the MoE routing weights).
void swiglu_forward(const Tensor& x, const Tensor& y, const Tensor& row_scale = Tensor());
void swiglu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx, bool accumulate);
// y = silu(gate) * up. Backward: dgate = (acc_gate ? dgate : 0) + dy * up * silu'(gate) and
// dup = (acc_up ? dup : 0) + dy * silu(gate); either gradient may be undefined (not wanted).
void silu_mul_forward(const Tensor& gate, const Tensor& up, const Tensor& y);
void silu_mul_backward(const Tensor& gate, const Tensor& up, const Tensor& dy, const Tensor& dgate, bool acc_gate,
                       const Tensor& dup, bool acc_up);

}  // namespace um::ops

namespace um::cpu {
void gelu_forward(const Tensor& x, const Tensor& y);
void gelu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx, bool accumulate);
void swiglu_forward(const Tensor& x, const Tensor& y, const Tensor& row_scale);
void swiglu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx, bool accumulate);
void silu_mul_forward(const Tensor& gate, const Tensor& up, const Tensor& y);
void silu_mul_backward(const Tensor& gate, const Tensor& up, const Tensor& dy, const Tensor& dgate, bool acc_gate,
                       const Tensor& dup, bool acc_up);
}  // namespace um::cpu

namespace um::cuda {
void gelu_forward(const Tensor& x, const Tensor& y);
void gelu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx, bool accumulate);
void swiglu_forward(const Tensor& x, const Tensor& y, const Tensor& row_scale);
void swiglu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx, bool accumulate);
void silu_mul_forward(const Tensor& gate, const Tensor& up, const Tensor& y);
void silu_mul_backward(const Tensor& gate, const Tensor& up, const Tensor& dy, const Tensor& dgate, bool acc_gate,
                       const Tensor& dup, bool acc_up);
}  // namespace um::cuda
