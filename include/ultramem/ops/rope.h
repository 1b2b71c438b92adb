// Rotary position embedding (RoPE) on the q and k heads of a packed qkv tensor
// ([B, T, (H + 2*Hkv) * D], see attention.h), GPT-NeoX / LLaMA "rotate_half" convention:
// within each q or k head, the pair (x_i, x_{i+D/2}), i < D/2, of the token at position t is rotated by
// angle t * theta^(-2i/D):
//   y_i = x_i cos - x_{i+D/2} sin,   y_{i+D/2} = x_{i+D/2} cos + x_i sin.
// Positions are 0..T-1 in every batch row; the v heads are copied unchanged. The backward pass is the
// rotation by -angle (a rotation's inverse is its transpose).
#pragma once
#include "ultramem/core/tape.h"
#include "ultramem/core/tensor.h"

namespace um::ops {

// Returns a new packed tensor of qkv's shape and dtype. D must be even.
Tensor rope(const Tensor& qkv, int64_t n_heads, int64_t n_kv_heads, float theta = 10000.f);

struct RopeShape {
  int64_t batch = 0, seq = 0, heads = 0, kv_heads = 0, head_dim = 0;
  float theta = 10000.f;
  int64_t rotated_heads() const { return heads + kv_heads; }                  // q and k heads
  int64_t row() const { return (heads + 2 * kv_heads) * head_dim; }            // elements per token
};
// Validates x ([B, T, (H + 2*Hkv) * D] with D even, theta > 0).
RopeShape rope_shape(const Tensor& x, int64_t n_heads, int64_t n_kv_heads, float theta);

// Kernel-level entry points. y is fully overwritten; y may not alias x.
void rope_forward(const Tensor& x, const Tensor& y, int64_t n_heads, int64_t n_kv_heads, float theta);
// dx = (accumulate ? dx : 0) + rotation of dy by -angle (q, k heads) / dy (v heads).
// dy and dx may differ in dtype (f32 / bf16 on the GPU).
void rope_backward(const Tensor& dy, const Tensor& dx, int64_t n_heads, int64_t n_kv_heads, float theta,
                   bool accumulate);

}  // namespace um::ops

namespace um::cpu {
// direction +1: forward rotation, -1: backward (inverse) rotation.
void rope(const ops::RopeShape& s, const Tensor& src, const Tensor& dst, int direction, bool accumulate);
}  // namespace um::cpu

namespace um::cuda {
void rope(const ops::RopeShape& s, const Tensor& src, const Tensor& dst, int direction, bool accumulate);
}  // namespace um::cuda
