#include "ultramem/ops/attention.h"

#include <cmath>

#include "ultramem/core/arena.h"
#include "src/ops/dispatch.h"

namespace um::ops {

AttentionShape attention_shape(const Tensor& qkv, int64_t n_heads, int64_t n_kv_heads, float scale) {
  if (!qkv.defined() || qkv.ndim() != 3)
    throw Error("attention: qkv", "shape [B, T, (H + 2*Hkv) * D]", qkv.defined() ? qkv.desc() : "undefined");
  if (!is_float(qkv.dtype())) throw Error("attention: qkv", "a float tensor", qkv.desc());
  if (n_heads < 1 || n_kv_heads < 1 || n_heads % n_kv_heads != 0)
    throw Error("attention: heads", "n_heads >= 1 a multiple of n_kv_heads >= 1",
                detail::concat("n_heads=", n_heads, " n_kv_heads=", n_kv_heads));
  const int64_t width = qkv.dim(2), packed = n_heads + 2 * n_kv_heads;
  if (width == 0 || width % packed != 0)
    throw Error("attention: qkv",
                detail::concat("a last dimension of (H + 2*Hkv) * D = ", packed, " * D with D >= 1"), qkv.desc());
  AttentionShape s;
  s.batch = qkv.dim(0);
  s.seq = qkv.dim(1);
  s.heads = n_heads;
  s.kv_heads = n_kv_heads;
  s.head_dim = width / packed;
  s.scale = scale > 0.f ? scale : float(1.0 / std::sqrt(double(s.head_dim)));
  return s;
}

DType attention_lse_dtype(const Tensor& qkv) { return qkv.dtype() == DType::f64 ? DType::f64 : DType::f32; }

// Shapes, dtypes and devices of the forward pass's outputs.
static void check_forward_outputs(const AttentionShape& s, const Tensor& qkv, const Tensor& y, const Tensor& lse,
                                  const char* who) {
  std::string w(who);
  check_shape(y, Shape{s.batch, s.seq, s.y_row()}, (w + ": y").c_str());
  check_dtype(y, qkv.dtype(), (w + ": y").c_str());
  check_shape(lse, Shape{s.batch, s.heads, s.seq}, (w + ": lse").c_str());
  check_dtype(lse, attention_lse_dtype(qkv), (w + ": lse").c_str());
  check_same_device(qkv, y, (w + ": qkv and y").c_str());
  check_same_device(qkv, lse, (w + ": qkv and lse").c_str());
}

void attention_forward(const Tensor& qkv, const Tensor& y, const Tensor& lse, int64_t n_heads, int64_t n_kv_heads,
                       float scale) {
  AttentionShape s = attention_shape(qkv, n_heads, n_kv_heads, scale);
  check_forward_outputs(s, qkv, y, lse, "attention");
  UM_DISPATCH_DEVICE(qkv, attention_forward, s, qkv, y, lse);
}

void attention_backward(const Tensor& qkv, const Tensor& y, const Tensor& lse, const Tensor& dy, const Tensor& dqkv,
                        int64_t n_heads, int64_t n_kv_heads, float scale, bool accumulate) {
  AttentionShape s = attention_shape(qkv, n_heads, n_kv_heads, scale);
  check_forward_outputs(s, qkv, y, lse, "attention backward");
  check_shape(dy, y.shape(), "attention backward: dy");
  check_dtype(dy, y.dtype(), "attention backward: dy");
  check_shape(dqkv, qkv.shape(), "attention backward: dqkv");
  check_dtype(dqkv, qkv.dtype(), "attention backward: dqkv");
  check_same_device(qkv, dy, "attention backward: qkv and dy");
  check_same_device(qkv, dqkv, "attention backward: qkv and dqkv");
  UM_DISPATCH_DEVICE(qkv, attention_backward, s, qkv, y, lse, dy, dqkv, accumulate);
}

Tensor attention(const Tensor& qkv, int64_t n_heads, int64_t n_kv_heads, float scale) {
  AttentionShape s = attention_shape(qkv, n_heads, n_kv_heads, scale);
  Tensor y = alloc_activation(Shape{s.batch, s.seq, s.y_row()}, qkv.dtype(), qkv.device());
  Tensor lse = alloc_activation(Shape{s.batch, s.heads, s.seq}, attention_lse_dtype(qkv), qkv.device());
  attention_forward(qkv, y, lse, n_heads, n_kv_heads, s.scale);
  if (needs_grad({&qkv})) {
    y.set_requires_grad(true);
    current_tape()->record([qkv, y, lse, n_heads, n_kv_heads, scale = s.scale] {
      Tensor dy = grad_of(y);
      if (!dy) return;
      GradSlot slot = grad_slot(qkv);
      if (slot) attention_backward(qkv, y, lse, dy, slot.grad, n_heads, n_kv_heads, scale, slot.accumulate);
    });
  }
  return y;
}

}  // namespace um::ops
