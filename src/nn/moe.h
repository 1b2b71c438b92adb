// Mixture-of-experts feed-forward (model.ffn = "moe"; docs/moe.md): a linear router (fp32 logits),
// softmax top-k, expert-contiguous dispatch, grouped expert GEMMs (GELU or SwiGLU, the routing weights
// scaling each row's activation), the combine, an optional always-on shared expert, and the load-balance
// and z auxiliary losses.
#pragma once
#include <memory>

#include "src/nn/mlp.h"
#include "ultramem/nn/registry.h"
#include "ultramem/ops/moe_dispatch.h"
#include "ultramem/ops/moe_router.h"

namespace um::nn {

struct MoeLayerOptions {
  int64_t num_experts = 8;
  bool swiglu = true;
  double capacity_factor = 0;  // 0 = dropless
  ops::MoeRouterOptions router;
};

struct MoeLayerResult {
  Tensor y;  // [N, d]
  ops::MoeRouting routing;
  ops::MoePlan plan;
};

// The layer as a function of its tensors (the module below, tests and bench-moe use it):
// x [N, d]; router [E, d]; w1 [E, h_in, d] with h_in = 2h ([gate | up] per expert) for SwiGLU, h for
// GELU; w2 [E, h, d] (OLMo-core's layout). Router logits are computed in fp32 (f64 when x is f64: gradchecks).
MoeLayerResult moe_layer(const Tensor& x, const Tensor& router, const Tensor& w1, const Tensor& w2,
                         const MoeLayerOptions& o);

class Moe : public FeedForward {
 public:
  Moe(const ModelConfig& cfg, int layer, const std::string& prefix, ParameterStore& ps);
  Tensor forward(const Tensor& x, StepContext& ctx) override;

 private:
  MoeLayerOptions opts_;
  std::string name_;  // "blocks.N.moe": aux-loss and statistics names
  Parameter *router_ = nullptr, *w1_ = nullptr, *w2_ = nullptr;
  std::unique_ptr<Mlp> shared_;
};

}  // namespace um::nn
