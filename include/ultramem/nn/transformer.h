// Pre-norm decoder-only transformer: token (+ learned position) embedding, n_layers blocks of
// x += attn(norm(x)); x += ffn(norm(x)), a final norm and a (tied) output head with a fused softmax
// cross-entropy. Parameter names follow OLMo's so checkpoints read naturally to its users.
#pragma once
#include <memory>
#include <vector>

#include "ultramem/nn/model_config.h"
#include "ultramem/nn/parameters.h"
#include "ultramem/nn/registry.h"

namespace um::nn {

class MemorySystem;  // src/nn/memory.h

class Transformer {
 public:
  Transformer(const ModelConfig& cfg, ParameterStore& ps);
  ~Transformer();
  // ids, targets: i32 [B, T] on the model's device (targets -1 = ignored). Returns the mean
  // cross-entropy plus the layers' auxiliary losses (ctx.aux_losses; ctx.ce_loss holds the
  // cross-entropy alone), an f32 [1] tensor (recorded on the current tape, if any).
  Tensor loss(const Tensor& ids, const Tensor& targets, StepContext& ctx);
  const ModelConfig& config() const { return cfg_; }
  // Matmul FLOPs per token for forward + backward (6 x matmul parameters + attention), for MFU.
  double flops_per_token(int64_t seq_len) const;
  // Once per optimizer step before its forward passes (memory layers refresh their Tucker
  // pre-selection vectors from the updated cores).
  void begin_step();

 private:
  struct Block;
  Tensor norm(const Tensor& x, const Parameter* w, const Parameter* b) const;
  Tensor dropout(const Tensor& x, StepContext& ctx) const;
  ModelConfig cfg_;
  Parameter* wte_ = nullptr;
  Parameter* wpe_ = nullptr;
  Parameter* head_ = nullptr;  // untied output head
  Parameter* ln_f_w_ = nullptr;
  Parameter* ln_f_b_ = nullptr;
  std::vector<std::unique_ptr<Block>> blocks_;
  std::unique_ptr<MemorySystem> memory_;
};

}  // namespace um::nn
