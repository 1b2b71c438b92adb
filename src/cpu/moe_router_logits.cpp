// CPU router logits: x, W and the logits share one dtype here (f32 or f64), so this is the linear op's
// GEMM without bias or activation.
#include "ultramem/ops/linear.h"
#include "ultramem/ops/moe_router_logits.h"

namespace um::cpu {

void moe_router_logits_forward(const Tensor& x, const Tensor& W, const Tensor& logits) {
  cpu::linear_forward(x, W, Tensor(), ops::Activation::none, logits, Tensor());
}

void moe_router_logits_backward(const Tensor& x, const Tensor& W, const Tensor& dlogits, const GradSlot& dx,
                                const GradSlot& dW) {
  cpu::linear_backward(x, W, dlogits, Tensor(), ops::Activation::none, dx, dW, GradSlot{});
}

}  // namespace um::cpu
