// The model half of the JSON config (key names and meanings: docs/config.md).
#pragma once
#include <cstdint>
#include <string>

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

  int64_t kv_heads() const { return n_kv_heads ? n_kv_heads : n_heads; }
  int64_t head_dim() const { return d_model / n_heads; }
  int64_t real_vocab() const { return valid_vocab ? valid_vocab : vocab_size; }
};

}  // namespace um::nn
