// The model half of the JSON config (key names and meanings: docs/config.md).
#pragma once
#include <cstdint>
#include <string>

#include "ultramem/nn/memory_config.h"

namespace um::nn {

struct ModelConfig {
  int64_t vocab_size = 50304;  // embedding rows (GPT-2's 50257 padded to a multiple of 64)
  int64_t valid_vocab = 0;     // real tokens; 0 = vocab_size. Padding columns take no part in the softmax
  int64_t d_model = 768;
  int64_t n_layers = 12;
  int64_t n_heads = 12;
  int64_t n_kv_heads = 0;  // 0 = n_heads; fewer = grouped-query attention
  int64_t max_seq_len = 1024;
  std::string norm = "layernorm";  // "layernorm" | "rmsnorm"
  bool norm_affine = true;         // learnable scale (and LayerNorm bias when `bias`)
  float norm_eps = 1e-5f;
  std::string pos_encoding = "learned";  // "learned" | "rope" | "none"
  float rope_theta = 10000.f;
  std::string ffn = "mlp";  // registered feed-forward type (nn/registry.h)
  std::string mlp_act = "gelu";  // "gelu" | "swiglu"
  int64_t mlp_hidden = 3072;
  bool bias = true;  // biases in linear layers (and LayerNorm)
  bool tie_embeddings = true;
  float init_std = 0.02f;
  std::string init = "megatron";  // "normal" | "megatron": output projections get std / sqrt(2 n_layers)
  float dropout = 0.f;
  MemoryConfig mem;  // memory layers (model.mem_* keys)
  // --- Mixture of experts (model.ffn = "moe"; docs/moe.md) ---
  int64_t moe_num_experts = 8;
  int64_t moe_top_k = 2;
  int64_t moe_hidden = 0;                 // expert hidden width; 0 = mlp_hidden
  double moe_loss_weight = 0.01;          // load-balance loss coefficient (E sum_e f_e P_e)
  double moe_zloss_weight = 0.001;        // router z-loss coefficient (mean logsumexp^2)
  bool moe_renormalize = false;           // top-k weights renormalised to sum to 1 (OLMoE: false)
  int64_t moe_shared_expert_hidden = 0;   // hidden width of an always-on shared expert; 0 = none
  double moe_capacity_factor = 0;         // 0 = dropless; f > 0: an expert takes at most ceil(f N k / E) tokens

  int64_t kv_heads() const { return n_kv_heads ? n_kv_heads : n_heads; }
  int64_t head_dim() const { return d_model / n_heads; }
  int64_t real_vocab() const { return valid_vocab ? valid_vocab : vocab_size; }
  int64_t expert_hidden() const { return moe_hidden ? moe_hidden : mlp_hidden; }
};

}  // namespace um::nn
