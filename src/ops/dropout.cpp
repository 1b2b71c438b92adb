#include "ultramem/ops/dropout.h"

#include "ultramem/core/arena.h"
#include "src/ops/dispatch.h"

namespace um::ops {

static void check_probability(float p) {
  if (!(p >= 0.f && p < 1.f)) throw Error("dropout: p", "a probability in [0, 1)", detail::concat(p));
}

void dropout_apply(const Tensor& src, float p, uint64_t seed, uint64_t offset, const Tensor& dst, bool accumulate) {
  check_probability(p);
  UM_CHECK(src.defined(), "dropout: a defined source tensor", "an undefined tensor");
  check_shape(dst, src.shape(), "dropout: dst");
  check_dtype(dst, src.dtype(), "dropout: dst");
  check_same_device(src, dst, "dropout: src and dst");
  UM_DISPATCH_DEVICE(src, dropout_apply, src, p, seed, offset, dst, accumulate);
}

Tensor dropout(const Tensor& x, float p, uint64_t seed, uint64_t offset) {
  check_probability(p);
  UM_CHECK(x.defined(), "dropout: a defined x", "an undefined tensor");
  if (p == 0.f) return x;
  Tensor y = alloc_activation(x.shape(), x.dtype(), x.device());
  dropout_apply(x, p, seed, offset, y, false);
  if (needs_grad({&x})) {
    y.set_requires_grad(true);
    current_tape()->record([x, y, p, seed, offset] {
      Tensor dy = grad_of(y);
      if (!dy) return;
      GradSlot dx = grad_slot(x);
      dropout_apply(dy, p, seed, offset, dx.grad, dx.accumulate);
    });
  }
  return y;
}

}  // namespace um::ops
