#include "src/nn/moe.h"

#include <cmath>

#include "ultramem/ops/activation.h"
#include "ultramem/ops/elementwise.h"
#include "ultramem/ops/grouped_linear.h"
#include "ultramem/ops/moe_router_logits.h"

namespace um::nn {

MoeLayerResult moe_layer(const Tensor& x, const Tensor& router, const Tensor& w1, const Tensor& w2,
                         const MoeLayerOptions& o) {
  UM_CHECK(x.defined() && x.ndim() == 2, "moe_layer: x of shape [tokens, d]", x.defined() ? x.desc() : "undefined");
  const int64_t N = x.dim(0), E = o.num_experts, k = o.router.top_k;
  UM_CHECK(router.defined() && router.ndim() == 2 && router.dim(0) == E,
           detail::concat("moe_layer: a router weight [", E, ", d]"), router.defined() ? router.desc() : "undefined");
  MoeLayerResult r;
  // Routing in fp32 (f64 for gradchecks) whatever the activations' dtype.
  Tensor logits = ops::moe_router_logits(x, router);
  r.routing = ops::moe_router(logits, o.router);
  int64_t capacity = 0;
  if (o.capacity_factor > 0)
    capacity = std::max<int64_t>(1, int64_t(std::ceil(o.capacity_factor * double(N * k) / double(E))));
  // The permute is queued before the host waits for the group sizes, so the GPU runs it meanwhile.
  r.plan = ops::moe_plan_start(r.routing.experts, E, capacity);
  Tensor xs = ops::moe_permute(x, r.plan);
  ops::moe_plan_finish(r.plan);
  // The routing weights scale each row's activation (ops/moe_dispatch.h): f32 on the GPU (the router's
  // dtype), the activations' dtype on the CPU.
  Tensor w = ops::moe_row_weights(x.device().is_cuda() ? r.routing.weights : ops::cast(r.routing.weights, x.dtype()),
                                  r.plan);
  Tensor ys = o.swiglu ? ops::swiglu_expert_mlp(xs, w1, w, w2, r.plan.groups)
                       : ops::grouped_linear(ops::scale_rows(ops::gelu(ops::grouped_linear(xs, w1, r.plan.groups)), w),
                                             w2, r.plan.groups, ops::GroupedWeight::in_out);
  r.y = ops::moe_combine(ys, r.plan);
  return r;
}

Moe::Moe(const ModelConfig& cfg, int layer, const std::string& prefix, ParameterStore& ps)
    : name_("blocks." + std::to_string(layer) + ".moe") {
  opts_.num_experts = cfg.moe_num_experts;
  opts_.swiglu = cfg.mlp_act == "swiglu";
  opts_.capacity_factor = cfg.moe_capacity_factor;
  opts_.router.top_k = cfg.moe_top_k;
  opts_.router.renormalize = cfg.moe_renormalize;
  opts_.router.balance_weight = cfg.moe_loss_weight;
  opts_.router.z_weight = cfg.moe_zloss_weight;
  UM_CHECK(cfg.moe_top_k <= cfg.moe_num_experts, "model.moe_top_k at most model.moe_num_experts", cfg.moe_top_k);
  const int64_t d = cfg.d_model, h = cfg.expert_hidden(), E = cfg.moe_num_experts;
  const float out_std = cfg.init == "megatron" ? cfg.init_std / std::sqrt(2.f * float(cfg.n_layers)) : cfg.init_std;
  const std::string p = prefix + ".ffn";
  router_ = &ps.add(p + ".router.layer.weight", {E, d}, ParamInit::normal(cfg.init_std), ParamKind::matrix);
  w1_ = &ps.add(p + ".experts.mlp.w1", {E, opts_.swiglu ? 2 * h : h, d}, ParamInit::normal(cfg.init_std),
                ParamKind::matrix);
  // [E, h, d] as OLMo-core: the d-wide rows start on 128-byte lines whatever h is (ops/grouped_linear.h).
  w2_ = &ps.add(p + ".experts.mlp.w2", {E, h, d}, ParamInit::normal(out_std), ParamKind::matrix);
  if (cfg.moe_shared_expert_hidden > 0) {
    ModelConfig shared = cfg;
    shared.mlp_hidden = cfg.moe_shared_expert_hidden;
    shared_ = std::make_unique<Mlp>(shared, p + ".shared_expert", ps);
  }
}

Tensor Moe::forward(const Tensor& x, StepContext& ctx) {
  const int64_t d = x.dim(-1), N = x.numel() / d;
  Tensor x2 = ops::reshape(x, Shape{N, d});
  MoeLayerResult r = moe_layer(x2, router_->compute, w1_->compute, w2_->compute, opts_);
  Tensor y = r.y;
  if (shared_) y = ops::add(y, ops::reshape(shared_->forward(x, ctx), Shape{N, d}));
  // Aux losses are f32 [1] on the model's device (the router runs in fp32).
  if (opts_.router.balance_weight > 0) ctx.aux_losses.push_back({name_ + ".balance", r.routing.balance_loss});
  if (opts_.router.z_weight > 0) ctx.aux_losses.push_back({name_ + ".zloss", r.routing.z_loss});
  if (ctx.collect_stats) {
    // Counts are host values already (the plan copied the group offsets): no extra synchronisation.
    ctx.stats[name_ + ".tokens_per_expert"] = r.plan.counts;
    if (opts_.capacity_factor > 0) ctx.stats[name_ + ".dropped"] = r.plan.dropped();
  }
  return ops::reshape(y, x.shape());
}

}  // namespace um::nn
