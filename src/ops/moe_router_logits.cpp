#include "ultramem/ops/moe_router_logits.h"

#include "src/ops/dispatch.h"
#include "ultramem/core/arena.h"

namespace um::ops {

static DType logits_dtype(const Tensor& x) { return x.dtype() == DType::f64 ? DType::f64 : DType::f32; }

static void check_inputs(const Tensor& x, const Tensor& W, const char* op) {
  if (!x.defined() || x.ndim() != 2)
    throw Error(detail::concat(op, ": x"), "a 2-d tensor [tokens, d]", x.defined() ? x.desc() : "undefined");
  if (!W.defined() || W.ndim() != 2 || W.dim(1) != x.dim(1))
    throw Error(detail::concat(op, ": W"), detail::concat("a router weight [experts, ", x.dim(1), "]"),
                W.defined() ? W.desc() : "undefined");
  check_dtype(W, x.dtype(), detail::concat(op, ": W (x's dtype)").c_str());
  check_same_device(x, W, detail::concat(op, ": W").c_str());
  const bool ok = x.device().is_cpu() ? (x.dtype() == DType::f32 || x.dtype() == DType::f64)
                                      : (x.dtype() == DType::f32 || x.dtype() == DType::bf16);
  UM_CHECK(ok, detail::concat(op, ": x of f32/f64 on the CPU, f32/bf16 on the GPU"), x.desc());
}

void moe_router_logits_forward(const Tensor& x, const Tensor& W, const Tensor& logits) {
  check_inputs(x, W, "moe_router_logits");
  check_shape(logits, Shape{x.dim(0), W.dim(0)}, "moe_router_logits: logits");
  check_dtype(logits, logits_dtype(x), "moe_router_logits: logits (f32, f64 for f64 inputs)");
  check_same_device(x, logits, "moe_router_logits: logits");
  UM_DISPATCH_DEVICE(x, moe_router_logits_forward, x, W, logits);
}

void moe_router_logits_backward(const Tensor& x, const Tensor& W, const Tensor& dlogits, const GradSlot& dx,
                                const GradSlot& dW) {
  check_inputs(x, W, "moe_router_logits backward");
  check_tensor(dlogits, Shape{x.dim(0), W.dim(0)}, logits_dtype(x), x, "moe_router_logits backward: dlogits");
  if (dx) {
    check_tensor(dx.grad, x.shape(), x.dtype(), x, "moe_router_logits backward: dx");
  }
  if (dW) {
    check_shape(dW.grad, W.shape(), "moe_router_logits backward: dW");
    if (dW.grad.dtype() != W.dtype())
      check_dtype(dW.grad, DType::f32, "moe_router_logits backward: dW (W's dtype or f32)");
    check_same_device(x, dW.grad, "moe_router_logits backward: dW");
  }
  if (!dx && !dW) return;
  UM_DISPATCH_DEVICE(x, moe_router_logits_backward, x, W, dlogits, dx, dW);
}

Tensor moe_router_logits(const Tensor& x, const Tensor& W) {
  check_inputs(x, W, "moe_router_logits");
  Tensor logits = alloc_activation(Shape{x.dim(0), W.dim(0)}, logits_dtype(x), x.device());
  moe_router_logits_forward(x, W, logits);
  if (needs_grad({&x, &W})) {
    logits.set_requires_grad(true);
    current_tape()->record([x, W, logits] {
      Tensor g = grad_of(logits);
      if (!g) return;
      moe_router_logits_backward(x, W, g, grad_slot(x), grad_slot(W));
    });
  }
  return logits;
}

}  // namespace um::ops
