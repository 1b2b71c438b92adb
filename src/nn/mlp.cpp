// The dense MLP feed-forward: ff_proj -> GELU (fused into the matmul epilogue) or SwiGLU -> ff_out.
#include "src/nn/mlp.h"

#include <cmath>

#include "ultramem/ops/activation.h"
#include "ultramem/ops/linear.h"

namespace um::nn {

Mlp::Mlp(const ModelConfig& cfg, const std::string& prefix, ParameterStore& ps) : swiglu_(cfg.mlp_act == "swiglu") {
  const int64_t d = cfg.d_model, h = cfg.mlp_hidden;
  const float out_std = cfg.init == "megatron" ? cfg.init_std / std::sqrt(2.f * float(cfg.n_layers)) : cfg.init_std;
  const int64_t proj_out = swiglu_ ? 2 * h : h;
  proj_w_ = &ps.add(prefix + ".ff_proj.weight", {proj_out, d}, ParamInit::normal(cfg.init_std), ParamKind::matrix);
  if (cfg.bias) proj_b_ = &ps.add(prefix + ".ff_proj.bias", {proj_out}, ParamInit::zeros(), ParamKind::bias);
  out_w_ = &ps.add(prefix + ".ff_out.weight", {d, h}, ParamInit::normal(out_std), ParamKind::matrix);
  if (cfg.bias) out_b_ = &ps.add(prefix + ".ff_out.bias", {d}, ParamInit::zeros(), ParamKind::bias);
}

Tensor Mlp::forward(const Tensor& x, StepContext&) {
  Tensor pb = proj_b_ ? proj_b_->compute : Tensor(), ob = out_b_ ? out_b_->compute : Tensor();
  Tensor h = swiglu_ ? ops::swiglu(ops::linear(x, proj_w_->compute, pb))
                     : ops::linear(x, proj_w_->compute, pb, ops::Activation::gelu);
  return ops::linear(h, out_w_->compute, ob);
}

}  // namespace um::nn
