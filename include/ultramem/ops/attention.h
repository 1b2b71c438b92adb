// Attention op family: causal multi-head / grouped-query self-attention on a packed qkv tensor.
//
// Layouts (each head's D values contiguous):
//   qkv  [B, T, (H + 2*Hkv) * D]  per token: H query heads | Hkv key heads | Hkv value heads
//   y    [B, T, H * D]            per token: the H heads' outputs
//   lse  [B, H, T]                per query row: log(sum_j exp(scale * q.k_j)) over the keys it sees
// Token t attends to tokens 0..t. Query head h reads kv head h / (H / Hkv).
//
// Backends: um::cpu (f32, f64: the reference) and um::cuda (bf16 on tensor cores for D = 64 and 128,
// f32 on CUDA cores for any D <= 128). The forward pass saves lse so the backward pass recomputes the
// softmax without storing the T x T probabilities.
#pragma once
#include "ultramem/core/tape.h"
#include "ultramem/core/tensor.h"

namespace um::ops {

// y = softmax(scale * q k^T + causal mask) v per head; scale <= 0 means 1/sqrt(D).
Tensor attention(const Tensor& qkv, int64_t n_heads, int64_t n_kv_heads, float scale = -1.f);

// Sizes of one attention call, derived from qkv and checked once (see attention_shape()).
struct AttentionShape {
  int64_t batch = 0, seq = 0, heads = 0, kv_heads = 0, head_dim = 0;
  float scale = 0.f;  // resolved: > 0
  int64_t qkv_row() const { return (heads + 2 * kv_heads) * head_dim; }  // elements per token of qkv
  int64_t y_row() const { return heads * head_dim; }                      // elements per token of y
};
// Validates qkv (3-d [B, T, (H + 2*Hkv) * D], H a multiple of Hkv) and resolves the scale.
AttentionShape attention_shape(const Tensor& qkv, int64_t n_heads, int64_t n_kv_heads, float scale);
// The dtype of lse: f32 (fp32 statistics), or f64 for f64 CPU activations (the gradcheck needs it exact).
DType attention_lse_dtype(const Tensor& qkv);

// Kernel-level entry points. y and lse are fully overwritten.
void attention_forward(const Tensor& qkv, const Tensor& y, const Tensor& lse, int64_t n_heads,
                       int64_t n_kv_heads, float scale = -1.f);
// dqkv (qkv's shape and dtype) = (accumulate ? dqkv : 0) + the gradient of the attention output
// with respect to qkv, applied to dy. y and lse are the forward pass's outputs.
void attention_backward(const Tensor& qkv, const Tensor& y, const Tensor& lse, const Tensor& dy,
                        const Tensor& dqkv, int64_t n_heads, int64_t n_kv_heads, float scale, bool accumulate);

}  // namespace um::ops

namespace um::cpu {
void attention_forward(const ops::AttentionShape& s, const Tensor& qkv, const Tensor& y, const Tensor& lse);
void attention_backward(const ops::AttentionShape& s, const Tensor& qkv, const Tensor& y, const Tensor& lse,
                        const Tensor& dy, const Tensor& dqkv, bool accumulate);
}  // namespace um::cpu

namespace um::cuda {
void attention_forward(const ops::AttentionShape& s, const Tensor& qkv, const Tensor& y, const Tensor& lse);
void attention_backward(const ops::AttentionShape& s, const Tensor& qkv, const Tensor& y, const Tensor& lse,
                        const Tensor& dy, const Tensor& dqkv, bool accumulate);
}  // namespace um::cuda
