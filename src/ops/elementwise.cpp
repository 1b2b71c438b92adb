#include "ultramem/ops/elementwise.h"

#include "ultramem/core/arena.h"
#include "src/ops/dispatch.h"
#include "src/ops/row_scale.h"

namespace um::ops {

void add_forward(const Tensor& a, const Tensor& b, const Tensor& y) {
  check_shape(b, a.shape(), "add: b");
  check_shape(y, a.shape(), "add: y");
  UM_DISPATCH_DEVICE(a, add_forward, a, b, y);
}

static void check_scale(const Tensor& x, const Tensor& s, const char* op) {
  UM_CHECK(x.defined() && x.ndim() == 2, detail::concat(op, ": x of shape [rows, cols]"),
           x.defined() ? x.desc() : "undefined");
  check_row_scale(x, x.dim(0), s, detail::concat(op, ": s"));
}

void scale_rows_forward(const Tensor& x, const Tensor& s, const Tensor& y) {
  check_scale(x, s, "scale_rows");
  check_tensor(y, x.shape(), x.dtype(), x, "scale_rows: y");
  UM_DISPATCH_DEVICE(x, scale_rows_forward, x, s, y);
}

void scale_rows_backward(const Tensor& x, const Tensor& s, const Tensor& dy, const GradSlot& dx, const GradSlot& ds) {
  check_scale(x, s, "scale_rows backward");
  check_shape(dy, x.shape(), "scale_rows backward: dy");
  check_dtype(dy, x.dtype(), "scale_rows backward: dy");
  if (dx) {
    check_shape(dx.grad, x.shape(), "scale_rows backward: dx");
    check_dtype(dx.grad, x.dtype(), "scale_rows backward: dx");
  }
  if (ds) {
    check_shape(ds.grad, s.shape(), "scale_rows backward: ds");
    check_dtype(ds.grad, s.dtype(), "scale_rows backward: ds");
  }
  if (!dx && !ds) return;
  UM_DISPATCH_DEVICE(x, scale_rows_backward, x, s, dy, dx, ds);
}

void cast_forward(const Tensor& src, const Tensor& dst) {
  check_shape(dst, src.shape(), "cast: dst");
  UM_DISPATCH_DEVICE(src, cast_forward, src, dst);
}

void accumulate(const Tensor& dst, const Tensor& src, bool acc) {
  UM_CHECK(dst.numel() == src.numel(), "a gradient with " + dst.desc() + "'s element count", src.desc());
  UM_DISPATCH_DEVICE(src, accumulate, dst, src, acc);
}

Tensor add(const Tensor& a, const Tensor& b) {
  Tensor y = alloc_activation(a.shape(), a.dtype(), a.device());
  add_forward(a, b, y);
  if (needs_grad({&a, &b})) {
    y.set_requires_grad(true);
    current_tape()->record([a, b, y] {
      Tensor gy = grad_of(y);
      if (!gy) return;
      accumulate_grad(grad_slot(a), gy);
      accumulate_grad(grad_slot(b), gy);
    });
  }
  return y;
}

Tensor scale_rows(const Tensor& x, const Tensor& s) {
  check_scale(x, s, "scale_rows");
  Tensor y = alloc_activation(x.shape(), x.dtype(), x.device());
  scale_rows_forward(x, s, y);
  if (needs_grad({&x, &s})) {
    y.set_requires_grad(true);
    current_tape()->record([x, s, y] {
      Tensor gy = grad_of(y);
      if (!gy) return;
      scale_rows_backward(x, s, gy, grad_slot(x), grad_slot(s));
    });
  }
  return y;
}

Tensor cast(const Tensor& x, DType dtype) {
  if (x.dtype() == dtype) return x;
  Tensor y = alloc_activation(x.shape(), dtype, x.device());
  cast_forward(x, y);
  if (needs_grad({&x})) {
    y.set_requires_grad(true);
    current_tape()->record([x, y] {
      Tensor gy = grad_of(y);
      if (gy) accumulate_grad(grad_slot(x), gy);
    });
  }
  return y;
}

Tensor reshape(const Tensor& x, const Shape& shape) {
  Tensor y = x.view(shape);
  if (needs_grad({&x})) {
    y.set_requires_grad(true);
    current_tape()->record([x, y] {
      Tensor gy = grad_of(y);
      if (!gy) return;
      TensorImpl* xi = x.impl();
      if (!xi->grad && gy.dtype() == x.dtype()) {
        // Every reader of y has run: its gradient is final, so x can take it over without a copy.
        xi->grad = gy.view(x.shape()).impl_ptr();
        xi->grad_ready = true;
      } else {
        accumulate_grad(grad_slot(x), gy);
      }
    });
  }
  return y;
}

}  // namespace um::ops
