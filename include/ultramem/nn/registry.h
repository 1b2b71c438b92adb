// Feed-forward layer registry: a block's FFN is built by name from the model config. Adding a layer
// type (MoE, memory layers) = its files + one register_ffn call in src/nn/registry.cpp.
#pragma once
#include <functional>
#include <nlohmann/json.hpp>
#include <memory>
#include <string>
#include <vector>

#include "ultramem/nn/model_config.h"
#include "ultramem/nn/parameters.h"

namespace um::nn {

// Per-step context a layer may need (dropout seeds, training vs evaluation), and what layers hand
// back: auxiliary losses and, on logged steps, statistics for the metrics file.
struct StepContext {
  bool training = true;
  uint64_t dropout_seed = 0;
  uint64_t dropout_offset = 0;  // advanced by each dropout call so masks never repeat within a step
  // Auxiliary losses (load balance, z-loss, memory aux losses): f32 [1] tensors on the model's device,
  // already multiplied by their coefficients. Transformer::loss adds them to the cross-entropy.
  struct AuxLoss {
    std::string name;  // "blocks.3.moe.balance" ...: logged per step
    Tensor value;
  };
  std::vector<AuxLoss> aux_losses;
  Tensor ce_loss;  // the cross-entropy part of the loss (set by Transformer::loss)
  // True on steps whose metrics are logged: layers then fill `stats` (name -> number or array) with
  // health figures (per-expert token counts, memory usage ...). Reading device values costs a sync,
  // so layers collect only when asked.
  bool collect_stats = false;
  nlohmann::json stats = nlohmann::json::object();
};

class FeedForward {
 public:
  virtual ~FeedForward() = default;
  // x: the FFN pre-norm output [B, T, d]; returns [B, T, d].
  virtual Tensor forward(const Tensor& x, StepContext& ctx) = 0;
};

using FfnFactory = std::function<std::unique_ptr<FeedForward>(const ModelConfig&, int layer, const std::string& prefix,
                                                              ParameterStore&)>;
void register_ffn(const std::string& name, FfnFactory factory);
std::unique_ptr<FeedForward> make_ffn(const ModelConfig& cfg, int layer, const std::string& prefix, ParameterStore& ps);
std::vector<std::string> registered_ffns();

}  // namespace um::nn
