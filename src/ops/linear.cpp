#include "ultramem/ops/linear.h"

#include "ultramem/core/arena.h"
#include "src/ops/dispatch.h"

namespace um::ops {

const char* activation_name(Activation act) {
  switch (act) {
    case Activation::none: return "none";
    case Activation::gelu: return "gelu";
  }
  return "?";
}

// W [out, in] and b [out] (or undefined), same dtype and device as x.
static void check_weights(const Tensor& x, const Tensor& W, const Tensor& b, const char* op) {
  std::string w = std::string(op) + ": W";
  if (!W.defined() || W.ndim() != 2 || W.dim(0) < 1 || W.dim(1) < 1)
    throw Error(w, "a 2-d weight [out, in] with out, in >= 1", W.desc());
  check_dtype(W, x.dtype(), w.c_str());
  check_same_device(x, W, w.c_str());
  if (b.defined()) {
    std::string bn = std::string(op) + ": b";
    check_shape(b, Shape{W.dim(0)}, bn.c_str());
    check_dtype(b, x.dtype(), bn.c_str());
    check_same_device(x, b, bn.c_str());
  }
}

// A weight gradient is f32 or the weights' dtype on the GPU (the f32 master gradient behind a bf16
// compute copy) and the weights' dtype on the CPU.
static void check_param_grad(const GradSlot& g, const Tensor& p, const Shape& shape, const char* what) {
  if (!g) return;
  check_shape(g.grad, shape, what);
  check_same_device(g.grad, p, what);
  bool ok = g.grad.dtype() == p.dtype() || (p.device().is_cuda() && g.grad.dtype() == DType::f32);
  if (!ok)
    throw Error(what, std::string("dtype ") + dtype_name(p.dtype()) + (p.device().is_cuda() ? " or f32" : ""),
                g.grad.desc());
}

void linear_forward(const Tensor& x, const Tensor& W, const Tensor& b, Activation act, const Tensor& y,
                    const Tensor& pre) {
  if (!x.defined() || x.ndim() != 2) throw Error("linear_forward: x", "a 2-d input [rows, in]", x.desc());
  check_weights(x, W, b, "linear_forward");
  check_shape(x, Shape{x.dim(0), W.dim(1)}, "linear_forward: x");
  Shape out{x.dim(0), W.dim(0)};
  check_shape(y, out, "linear_forward: y");
  check_dtype(y, x.dtype(), "linear_forward: y");
  check_same_device(x, y, "linear_forward: y");
  if (pre.defined()) {
    UM_CHECK(act != Activation::none, "no pre-activation buffer with act == none", pre.desc());
    check_shape(pre, out, "linear_forward: pre");
    check_dtype(pre, x.dtype(), "linear_forward: pre");
    check_same_device(x, pre, "linear_forward: pre");
  }
  UM_DISPATCH_DEVICE(x, linear_forward, x, W, b, act, y, pre);
}

void linear_backward(const Tensor& x, const Tensor& W, const Tensor& dy, const Tensor& pre, Activation act,
                     const GradSlot& dx, const GradSlot& dW, const GradSlot& db) {
  if (!x.defined() || x.ndim() != 2) throw Error("linear_backward: x", "a 2-d input [rows, in]", x.desc());
  check_weights(x, W, Tensor(), "linear_backward");
  check_shape(x, Shape{x.dim(0), W.dim(1)}, "linear_backward: x");
  Shape out{x.dim(0), W.dim(0)};
  check_shape(dy, out, "linear_backward: dy");
  check_dtype(dy, x.dtype(), "linear_backward: dy");
  check_same_device(x, dy, "linear_backward: dy");
  if (act != Activation::none) {
    check_shape(pre, out, "linear_backward: pre (the saved pre-activation)");
    check_dtype(pre, x.dtype(), "linear_backward: pre");
    check_same_device(x, pre, "linear_backward: pre");
  }
  if (dx) {
    check_tensor(dx.grad, x.shape(), x.dtype(), x, "linear_backward: dx");
  }
  check_param_grad(dW, W, W.shape(), "linear_backward: dW");
  check_param_grad(db, W, Shape{W.dim(0)}, "linear_backward: db");
  UM_DISPATCH_DEVICE(x, linear_backward, x, W, dy, pre, act, dx, dW, db);
}

Tensor linear(const Tensor& x, const Tensor& W, const Tensor& b, Activation act) {
  if (!x.defined() || x.ndim() < 1) throw Error("linear: x", "an input [..., in]", x.desc());
  check_weights(x, W, b, "linear");
  const int64_t in = W.dim(1), out = W.dim(0);
  if (x.dim(-1) != in)
    throw Error("linear: x", detail::concat("a last dimension of ", in, " (W is ", W.desc(), ")"), x.desc());
  const int64_t rows = x.numel() / in;
  Shape y_shape = x.shape();
  y_shape[-1] = out;
  Device dev = x.device();
  Tensor y = alloc_activation(y_shape, x.dtype(), dev);
  const bool record = needs_grad({&x, &W, &b});
  // The pre-activation is kept only when a backward pass will need it.
  Tensor pre = (record && act != Activation::none) ? alloc_activation(Shape{rows, out}, x.dtype(), dev) : Tensor();
  Tensor x2 = x.view(Shape{rows, in});
  linear_forward(x2, W, b, act, y.view(Shape{rows, out}), pre);
  if (record) {
    y.set_requires_grad(true);
    current_tape()->record([x, x2, W, b, act, y, pre, rows, out] {
      Tensor gy = grad_of(y);
      if (!gy) return;
      GradSlot dx = grad_slot(x), dW = grad_slot(W), db = grad_slot(b);
      if (dx) dx.grad = dx.grad.view(x2.shape());
      linear_backward(x2, W, gy.view(Shape{rows, out}), pre, act, dx, dW, db);
    });
  }
  return y;
}

}  // namespace um::ops
