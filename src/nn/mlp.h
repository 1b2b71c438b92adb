#pragma once
#include "ultramem/nn/registry.h"

namespace um::nn {

class Mlp : public FeedForward {
 public:
  Mlp(const ModelConfig& cfg, const std::string& prefix, ParameterStore& ps);
  Tensor forward(const Tensor& x, StepContext& ctx) override;

 private:
  bool swiglu_;
  Parameter *proj_w_ = nullptr, *proj_b_ = nullptr, *out_w_ = nullptr, *out_b_ = nullptr;
};

}  // namespace um::nn
