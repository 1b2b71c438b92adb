#include "ultramem/nn/transformer.h"

#include <cmath>

#include "ultramem/ops/attention.h"
#include "ultramem/ops/cross_entropy.h"
#include "ultramem/ops/dropout.h"
#include "ultramem/ops/elementwise.h"
#include "ultramem/ops/embedding.h"
#include "ultramem/ops/linear.h"
#include "ultramem/ops/norm.h"
#include "ultramem/ops/rope.h"
#include "src/nn/memory.h"

namespace um::nn {

static Tensor value(const Parameter* p) { return p ? p->compute : Tensor(); }

struct Transformer::Block {
  Parameter *attn_norm_w = nullptr, *attn_norm_b = nullptr;
  Parameter *att_proj_w = nullptr, *att_proj_b = nullptr;
  Parameter *attn_out_w = nullptr, *attn_out_b = nullptr;
  Parameter *ff_norm_w = nullptr, *ff_norm_b = nullptr;
  std::unique_ptr<FeedForward> ffn;
};

// Declares a norm's scale (and bias) as the config asks; returns them through w and b.
static void add_norm(const ModelConfig& cfg, ParameterStore& ps, const std::string& prefix, Parameter** w,
                     Parameter** b) {
  if (!cfg.norm_affine) return;
  *w = &ps.add(prefix + ".weight", {cfg.d_model}, ParamInit::ones(), ParamKind::norm);
  if (cfg.norm == "layernorm" && cfg.bias) *b = &ps.add(prefix + ".bias", {cfg.d_model}, ParamInit::zeros(), ParamKind::bias);
}

Transformer::Transformer(const ModelConfig& cfg, ParameterStore& ps) : cfg_(cfg) {
  UM_CHECK(cfg.d_model % cfg.n_heads == 0, "model.d_model divisible by model.n_heads", cfg.d_model, " and ", cfg.n_heads);
  UM_CHECK(cfg.n_heads % cfg.kv_heads() == 0, "model.n_heads divisible by model.n_kv_heads", cfg.n_heads, " and ",
           cfg.kv_heads());
  const float out_std =
      cfg.init == "megatron" ? cfg.init_std / std::sqrt(2.f * float(cfg.n_layers)) : cfg.init_std;
  wte_ = &ps.add("transformer.wte.weight", {cfg.vocab_size, cfg.d_model}, ParamInit::normal(cfg.init_std),
                 ParamKind::embedding);
  if (cfg.pos_encoding == "learned")
    wpe_ = &ps.add("transformer.wpe.weight", {cfg.max_seq_len, cfg.d_model}, ParamInit::normal(cfg.init_std),
                   ParamKind::embedding);
  const int64_t qkv_out = (cfg.n_heads + 2 * cfg.kv_heads()) * cfg.head_dim();
  for (int64_t i = 0; i < cfg.n_layers; ++i) {
    auto blk = std::make_unique<Block>();
    std::string p = "transformer.blocks." + std::to_string(i);
    add_norm(cfg, ps, p + ".attn_norm", &blk->attn_norm_w, &blk->attn_norm_b);
    blk->att_proj_w = &ps.add(p + ".att_proj.weight", {qkv_out, cfg.d_model}, ParamInit::normal(cfg.init_std),
                              ParamKind::matrix);
    if (cfg.bias) blk->att_proj_b = &ps.add(p + ".att_proj.bias", {qkv_out}, ParamInit::zeros(), ParamKind::bias);
    blk->attn_out_w = &ps.add(p + ".attn_out.weight", {cfg.d_model, cfg.d_model}, ParamInit::normal(out_std),
                              ParamKind::matrix);
    if (cfg.bias) blk->attn_out_b = &ps.add(p + ".attn_out.bias", {cfg.d_model}, ParamInit::zeros(), ParamKind::bias);
    add_norm(cfg, ps, p + ".ff_norm", &blk->ff_norm_w, &blk->ff_norm_b);
    blk->ffn = make_ffn(cfg, int(i), p, ps);
    blocks_.push_back(std::move(blk));
  }
  memory_ = std::make_unique<MemorySystem>(cfg, ps);
  add_norm(cfg, ps, "transformer.ln_f", &ln_f_w_, &ln_f_b_);
  if (!cfg.tie_embeddings)
    head_ = &ps.add("transformer.ff_out.weight", {cfg.vocab_size, cfg.d_model}, ParamInit::normal(cfg.init_std),
                    ParamKind::matrix);
}

Transformer::~Transformer() = default;

Tensor Transformer::norm(const Tensor& x, const Parameter* w, const Parameter* b) const {
  if (cfg_.norm == "rmsnorm") return ops::rms_norm(x, value(w), cfg_.norm_eps);
  return ops::layer_norm(x, value(w), value(b), cfg_.norm_eps);
}

Tensor Transformer::dropout(const Tensor& x, StepContext& ctx) const {
  if (!ctx.training || cfg_.dropout <= 0.f) return x;
  Tensor y = ops::dropout(x, cfg_.dropout, ctx.dropout_seed, ctx.dropout_offset);
  ctx.dropout_offset += uint64_t(x.numel());
  return y;
}

Tensor Transformer::loss(const Tensor& ids, const Tensor& targets, StepContext& ctx) {
  UM_CHECK(ids.ndim() == 2 && targets.shape() == ids.shape(), "ids and targets of shape [batch, seq]",
           ids.desc(), " and ", targets.desc());
  const int64_t B = ids.dim(0), T = ids.dim(1), d = cfg_.d_model;
  UM_CHECK(T <= cfg_.max_seq_len || cfg_.pos_encoding != "learned", "a sequence no longer than model.max_seq_len",
           T, " > ", cfg_.max_seq_len);
  Tensor x = ops::embedding(ids, wte_->compute);
  if (wpe_) {
    // Position ids [B, T] live on the device; rebuilt only when the batch shape changes.
    thread_local Tensor positions;
    if (!positions.defined() || positions.shape() != ids.shape() || !(positions.device() == ids.device())) {
      std::vector<int64_t> pos(size_t(B * T));
      for (int64_t i = 0; i < B * T; ++i) pos[size_t(i)] = i % T;
      positions = Tensor::from_ints(pos, ids.shape(), DType::i32, ids.device());
    }
    x = ops::add(x, ops::embedding(positions, wpe_->compute));
  }
  x = dropout(x, ctx);
  const int64_t H = cfg_.n_heads, Hkv = cfg_.kv_heads();
  // Memory layers read a block's FFN input (after its pre-norm) and add to the residual stream after
  // the block they name (the same block for "full", a later one for skip-layer placement).
  const auto& places = memory_->placements();
  std::vector<Tensor> mem_out(places.size());
  for (int64_t li = 0; li < int64_t(blocks_.size()); ++li) {
    auto& blk = blocks_[size_t(li)];
    Tensor h = norm(x, blk->attn_norm_w, blk->attn_norm_b);
    Tensor qkv = ops::linear(h, blk->att_proj_w->compute, value(blk->att_proj_b));
    if (cfg_.pos_encoding == "rope") qkv = ops::rope(qkv, H, Hkv, cfg_.rope_theta);
    Tensor a = ops::attention(qkv, H, Hkv);
    a = ops::linear(a, blk->attn_out_w->compute, value(blk->attn_out_b));
    x = ops::add(x, dropout(a, ctx));
    h = norm(x, blk->ff_norm_w, blk->ff_norm_b);
    x = ops::add(x, dropout(blk->ffn->forward(h, ctx), ctx));
    for (size_t m = 0; m < places.size(); ++m)
      if (places[m].read == li) mem_out[m] = memory_->forward(m, h, ctx);
    for (size_t m = 0; m < places.size(); ++m)
      if (places[m].write == li) x = ops::add(x, mem_out[m]);
  }
  x = norm(x, ln_f_w_, ln_f_b_);
  Tensor logits = ops::linear(ops::reshape(x, {B * T, d}), head_ ? head_->compute : wte_->compute, Tensor());
  Tensor loss = ops::cross_entropy(logits, ops::reshape(targets, {B * T}), cfg_.real_vocab());
  ctx.ce_loss = loss;
  for (const auto& aux : ctx.aux_losses) loss = ops::add(loss, aux.value);
  return loss;
}

double Transformer::flops_per_token(int64_t seq_len) const {
  // PaLM's estimate (as nanoGPT and llm.c report MFU): 6 flops per matmul weight per token, plus
  // attention's 12 * layers * d * T (scores and weighted sum, forward + backward).
  const double d = double(cfg_.d_model), L = double(cfg_.n_layers);
  const double qkv = double((cfg_.n_heads + 2 * cfg_.kv_heads()) * cfg_.head_dim());
  const double mlp_in = double(cfg_.mlp_act == "swiglu" ? 2 * cfg_.mlp_hidden : cfg_.mlp_hidden);
  double ffn = d * mlp_in + double(cfg_.mlp_hidden) * d;
  if (cfg_.ffn == "moe") {
    // Active experts only: top_k experts per token, plus the router and the shared expert (docs/moe.md).
    const double h = double(cfg_.expert_hidden()), hs = double(cfg_.moe_shared_expert_hidden);
    const double in_mult = cfg_.mlp_act == "swiglu" ? 3.0 : 2.0;
    ffn = double(cfg_.moe_top_k) * in_mult * d * h + d * double(cfg_.moe_num_experts) + in_mult * d * hs;
  }
  const double per_layer = d * qkv + d * d + ffn;
  const double matmul_params = L * per_layer + double(cfg_.vocab_size) * d;
  return 6.0 * matmul_params + 12.0 * L * d * double(seq_len) + memory_->flops_per_token();
}

void Transformer::begin_step() { memory_->begin_step(); }

}  // namespace um::nn
