// MoE router op family: softmax (fp32) over expert logits, top-k selection with optional
// renormalisation, and the two auxiliary losses, with their backward into the logits.
//
// For N tokens, E experts and k = top_k, with p = softmax(logits) [N, E]:
//   experts[t, :]  the k largest p[t, e], in descending order; equal probabilities go to the lower index
//   weights[t, j]  p[t, experts[t, j]]  (renormalize: divided by the sum over the k selected)
//   counts[e]      assignments routed to e (sum over tokens and slots: N * k in all)
//   balance_loss   balance_weight * E * sum_e f_e P_e, f_e = counts[e] / (N k), P_e = mean_t p[t, e]
//                  (Switch Transformer's form; 1 at perfect balance. Hugging Face's OLMoE/Mixtral
//                  load_balancing_loss_func uses f_e = counts[e] / N, i.e. k times this)
//   z_loss         z_weight * mean_t logsumexp(logits[t, :])^2 (ST-MoE's router z-loss)
// f_e is a count, so it takes no gradient (as everywhere); P_e and the z-loss do.
//
// Backward: dp = dp(weights) + dp(balance); dlogits = p * (dp - sum_e p dp) + dz * 2 z_weight lse p / N.
// The GPU runs one warp per token (E up to kMaxExperts, k up to kMaxTopK) and fixed-order
// reductions for P_e and the z-loss sum: deterministic, no float atomics (counts are integer atomics).
#pragma once
#include "ultramem/core/tape.h"
#include "ultramem/core/tensor.h"

namespace um::ops {

constexpr int64_t kMoeMaxTopK = 16;
constexpr int64_t kMoeMaxExperts = 1024;

struct MoeRouterOptions {
  int64_t top_k = 2;
  bool renormalize = false;
  double balance_weight = 0.01;
  double z_weight = 0.001;
};

struct MoeRouting {
  Tensor weights;       // [N, k], the logits' dtype
  Tensor experts;       // i32 [N, k]
  Tensor counts;        // i32 [E]
  Tensor balance_loss;  // [1], already weighted
  Tensor z_loss;        // [1], already weighted
};

// logits [N, E]: f32 or f64 on the CPU, f32 on the GPU (route in fp32 whatever the activations).
// weights, balance_loss and z_loss are differentiable (one tape node for all three).
MoeRouting moe_router(const Tensor& logits, const MoeRouterOptions& o);

// Kernel-level entry points. probs [N, E] and lse [N] (logits' dtype) are saved for the backward pass.
void moe_router_forward(const Tensor& logits, const MoeRouterOptions& o, const Tensor& probs, const Tensor& lse,
                        const Tensor& weights, const Tensor& experts, const Tensor& counts,
                        const Tensor& balance_loss, const Tensor& z_loss);
// dweights [N, k], dbalance [1], dz [1]: any may be undefined (no gradient from that output).
// dlogits [N, E] is written with beta = dlogits.accumulate.
void moe_router_backward(const MoeRouterOptions& o, const Tensor& probs, const Tensor& lse, const Tensor& weights,
                         const Tensor& experts, const Tensor& counts, const Tensor& dweights, const Tensor& dbalance,
                         const Tensor& dz, const GradSlot& dlogits);

}  // namespace um::ops

namespace um::cpu {
void moe_router_forward(const Tensor& logits, const ops::MoeRouterOptions& o, const Tensor& probs, const Tensor& lse,
                        const Tensor& weights, const Tensor& experts, const Tensor& counts,
                        const Tensor& balance_loss, const Tensor& z_loss);
void moe_router_backward(const ops::MoeRouterOptions& o, const Tensor& probs, const Tensor& lse, const Tensor& weights,
                         const Tensor& experts, const Tensor& counts, const Tensor& dweights, const Tensor& dbalance,
                         const Tensor& dz, const GradSlot& dlogits);
}  // namespace um::cpu

namespace um::cuda {
void moe_router_forward(const Tensor& logits, const ops::MoeRouterOptions& o, const Tensor& probs, const Tensor& lse,
                        const Tensor& weights, const Tensor& experts, const Tensor& counts,
                        const Tensor& balance_loss, const Tensor& z_loss);
void moe_router_backward(const ops::MoeRouterOptions& o, const Tensor& probs, const Tensor& lse, const Tensor& weights,
                         const Tensor& experts, const Tensor& counts, const Tensor& dweights, const Tensor& dbalance,
                         const Tensor& dz, const GradSlot& dlogits);
}  // namespace um::cuda
