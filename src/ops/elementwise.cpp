#include "ultramem/ops/elementwise.h"

#include "ultramem/core/arena.h"
#include "src/ops/dispatch.h"

namespace um::ops {

void add_forward(const Tensor& a, const Tensor& b, const Tensor& y) {
  check_shape(b, a.shape(), "add: b");
  check_shape(y, a.shape(), "add: y");
  UM_DISPATCH_DEVICE(a, add_forward, a, b, y);
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
