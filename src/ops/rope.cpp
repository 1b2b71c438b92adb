#include "ultramem/ops/rope.h"

#include "ultramem/core/arena.h"
#include "src/ops/dispatch.h"

namespace um::ops {

RopeShape rope_shape(const Tensor& x, int64_t n_heads, int64_t n_kv_heads, float theta) {
  if (!x.defined() || x.ndim() != 3)
    throw Error("rope: qkv", "shape [B, T, (H + 2*Hkv) * D]", x.defined() ? x.desc() : "undefined");
  if (n_heads < 1 || n_kv_heads < 1)
    throw Error("rope: heads", "n_heads >= 1 and n_kv_heads >= 1",
                detail::concat("n_heads=", n_heads, " n_kv_heads=", n_kv_heads));
  if (!(theta > 0.f)) throw Error("rope: theta", "a positive base", std::to_string(theta));
  const int64_t width = x.dim(2), packed = n_heads + 2 * n_kv_heads;
  if (width == 0 || width % packed != 0 || (width / packed) % 2 != 0)
    throw Error("rope: qkv", detail::concat("a last dimension of (H + 2*Hkv) * D = ", packed, " * D with D even"),
                x.desc());
  RopeShape s;
  s.batch = x.dim(0);
  s.seq = x.dim(1);
  s.heads = n_heads;
  s.kv_heads = n_kv_heads;
  s.head_dim = width / packed;
  s.theta = theta;
  return s;
}

void rope_forward(const Tensor& x, const Tensor& y, int64_t n_heads, int64_t n_kv_heads, float theta) {
  RopeShape s = rope_shape(x, n_heads, n_kv_heads, theta);
  check_shape(y, x.shape(), "rope: y");
  check_dtype(y, x.dtype(), "rope: y");
  check_same_device(x, y, "rope: x and y");
  UM_DISPATCH_DEVICE(x, rope, s, x, y, +1, false);
}

void rope_backward(const Tensor& dy, const Tensor& dx, int64_t n_heads, int64_t n_kv_heads, float theta,
                   bool accumulate) {
  RopeShape s = rope_shape(dy, n_heads, n_kv_heads, theta);
  check_shape(dx, dy.shape(), "rope backward: dx");
  check_same_device(dy, dx, "rope backward: dy and dx");
  if (dy.device().is_cpu()) check_dtype(dx, dy.dtype(), "rope backward: dx");
  UM_DISPATCH_DEVICE(dy, rope, s, dy, dx, -1, accumulate);
}

Tensor rope(const Tensor& qkv, int64_t n_heads, int64_t n_kv_heads, float theta) {
  rope_shape(qkv, n_heads, n_kv_heads, theta);
  Tensor y = alloc_activation(qkv.shape(), qkv.dtype(), qkv.device());
  rope_forward(qkv, y, n_heads, n_kv_heads, theta);
  if (needs_grad({&qkv})) {
    y.set_requires_grad(true);
    current_tape()->record([qkv, y, n_heads, n_kv_heads, theta] {
      Tensor dy = grad_of(y);
      if (!dy) return;
      GradSlot slot = grad_slot(qkv);
      if (slot) rope_backward(dy, slot.grad, n_heads, n_kv_heads, theta, slot.accumulate);
    });
  }
  return y;
}

}  // namespace um::ops
