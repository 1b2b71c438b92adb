#include "ultramem/ops/activation.h"

#include "ultramem/core/arena.h"
#include "ultramem/ops/elementwise.h"
#include "src/ops/dispatch.h"
#include "src/ops/row_scale.h"

namespace um::ops {

static void check_like(const Tensor& t, const Tensor& x, const Shape& shape, const char* what) {
  check_shape(t, shape, what);
  check_dtype(t, x.dtype(), what);
  check_same_device(x, t, what);
}

// The shape of swiglu's output: x's with the last dimension halved.
static Shape swiglu_out_shape(const Tensor& x) {
  if (!x.defined() || x.ndim() < 1 || x.dim(-1) < 2 || x.dim(-1) % 2 != 0)
    throw Error("swiglu: x", "shape [..., 2h] ([gate | up]) with an even last dimension", x.desc());
  Shape s = x.shape();
  s[-1] = x.dim(-1) / 2;
  return s;
}

void gelu_forward(const Tensor& x, const Tensor& y) {
  check_like(y, x, x.shape(), "gelu: y");
  UM_DISPATCH_DEVICE(x, gelu_forward, x, y);
}

void gelu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx, bool accumulate) {
  check_like(dy, x, x.shape(), "gelu backward: dy");
  check_like(dx, x, x.shape(), "gelu backward: dx");
  UM_DISPATCH_DEVICE(x, gelu_backward, x, dy, dx, accumulate);
}

void swiglu_forward(const Tensor& x, const Tensor& y, const Tensor& row_scale) {
  check_like(y, x, swiglu_out_shape(x), "swiglu: y");
  if (row_scale.defined()) check_row_scale(x, x.numel() / x.dim(-1), row_scale, "swiglu: row_scale");
  UM_DISPATCH_DEVICE(x, swiglu_forward, x, y, row_scale);
}

void swiglu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx, bool accumulate) {
  check_like(dy, x, swiglu_out_shape(x), "swiglu backward: dy");
  check_like(dx, x, x.shape(), "swiglu backward: dx");
  UM_DISPATCH_DEVICE(x, swiglu_backward, x, dy, dx, accumulate);
}

// gate and up: one shape and dtype on one device.
static void check_silu_mul_inputs(const Tensor& gate, const Tensor& up, const char* op) {
  UM_CHECK(gate.defined() && up.defined(), detail::concat(op, ": defined gate and up"), "an undefined tensor");
  check_like(up, gate, gate.shape(), detail::concat(op, ": up (gate's shape and dtype)").c_str());
}

void silu_mul_forward(const Tensor& gate, const Tensor& up, const Tensor& y) {
  check_silu_mul_inputs(gate, up, "silu_mul");
  check_like(y, gate, gate.shape(), "silu_mul: y");
  UM_DISPATCH_DEVICE(gate, silu_mul_forward, gate, up, y);
}

void silu_mul_backward(const Tensor& gate, const Tensor& up, const Tensor& dy, const Tensor& dgate, bool acc_gate,
                       const Tensor& dup, bool acc_up) {
  check_silu_mul_inputs(gate, up, "silu_mul backward");
  check_like(dy, gate, gate.shape(), "silu_mul backward: dy");
  if (dgate.defined()) check_like(dgate, gate, gate.shape(), "silu_mul backward: dgate");
  if (dup.defined()) check_like(dup, gate, gate.shape(), "silu_mul backward: dup");
  if (!dgate.defined() && !dup.defined()) return;
  UM_DISPATCH_DEVICE(gate, silu_mul_backward, gate, up, dy, dgate, acc_gate, dup, acc_up);
}

Tensor gelu(const Tensor& x) {
  UM_CHECK(x.defined(), "gelu: a defined x", "an undefined tensor");
  Tensor y = alloc_activation(x.shape(), x.dtype(), x.device());
  gelu_forward(x, y);
  if (needs_grad({&x})) {
    y.set_requires_grad(true);
    current_tape()->record([x, y] {
      Tensor dy = grad_of(y);
      if (!dy) return;
      GradSlot dx = grad_slot(x);
      gelu_backward(x, dy, dx.grad, dx.accumulate);
    });
  }
  return y;
}

Tensor swiglu(const Tensor& x) {
  Tensor y = alloc_activation(swiglu_out_shape(x), x.dtype(), x.device());
  swiglu_forward(x, y);
  if (needs_grad({&x})) {
    y.set_requires_grad(true);
    current_tape()->record([x, y] {
      Tensor dy = grad_of(y);
      if (!dy) return;
      GradSlot dx = grad_slot(x);
      swiglu_backward(x, dy, dx.grad, dx.accumulate);
    });
  }
  return y;
}

Tensor silu_mul(const Tensor& gate, const Tensor& up) {
  check_silu_mul_inputs(gate, up, "silu_mul");
  Tensor y = alloc_activation(gate.shape(), gate.dtype(), gate.device());
  silu_mul_forward(gate, up, y);
  if (needs_grad({&gate, &up})) {
    y.set_requires_grad(true);
    current_tape()->record([gate, up, y] {
      Tensor dy = grad_of(y);
      if (!dy) return;
      if (gate.same(up)) {  // silu_mul(x, x): both halves of the gradient land in one slot
        GradSlot dx = grad_slot(gate);
        Tensor dup = alloc_activation(up.shape(), up.dtype(), up.device());
        silu_mul_backward(gate, up, dy, dx.grad, dx.accumulate, dup, false);
        accumulate(dx.grad, dup, true);
        return;
      }
      GradSlot dg = grad_slot(gate), du = grad_slot(up);
      silu_mul_backward(gate, up, dy, dg.grad, dg.accumulate, du.grad, du.accumulate);
    });
  }
  return y;
}

}  // namespace um::ops
