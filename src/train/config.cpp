#include "ultramem/train/config.h"

#include <fstream>
#include <limits>

#include "ultramem/config/json_reader.h"
#include "ultramem/core/check.h"
#include "ultramem/train/memory_config.h"

namespace um::train {

using config::JsonReader;
using json = nlohmann::json;
static constexpr int64_t kBig = int64_t(1) << 40;

static nn::ModelConfig parse_model(const json* obj) {
  JsonReader r(obj, "model");
  nn::ModelConfig m;
  m.vocab_size = r.get_int("vocab_size", m.vocab_size, 2, int64_t(1) << 31);
  m.valid_vocab = r.get_int("valid_vocab", m.valid_vocab, 0, m.vocab_size);
  m.d_model = r.get_int("d_model", m.d_model, 1, 1 << 16);
  m.n_layers = r.get_int("n_layers", m.n_layers, 1, 1024);
  m.n_heads = r.get_int("n_heads", m.n_heads, 1, 1024);
  m.n_kv_heads = r.get_int("n_kv_heads", m.n_kv_heads, 0, m.n_heads);
  m.max_seq_len = r.get_int("max_seq_len", m.max_seq_len, 1, 1 << 20);
  m.norm = r.get_choice("norm", m.norm, {"layernorm", "rmsnorm"});
  m.norm_affine = r.get_bool("norm_affine", m.norm_affine);
  m.norm_eps = float(r.get_double("norm_eps", m.norm_eps, 0, 1));
  m.pos_encoding = r.get_choice("pos_encoding", m.pos_encoding, {"learned", "rope", "none"});
  m.rope_theta = float(r.get_double("rope_theta", m.rope_theta, 1, 1e9));
  m.ffn = r.get_string("ffn", m.ffn);
  m.mlp_act = r.get_choice("mlp_act", m.mlp_act, {"gelu", "swiglu"});
  m.mlp_hidden = r.get_int("mlp_hidden", m.mlp_hidden, 1, 1 << 20);
  m.bias = r.get_bool("bias", m.bias);
  m.tie_embeddings = r.get_bool("tie_embeddings", m.tie_embeddings);
  m.init_std = float(r.get_double("init_std", m.init_std, 0, 10));
  m.init = r.get_choice("init", m.init, {"normal", "megatron"});
  m.dropout = float(r.get_double("dropout", m.dropout, 0, 0.99));
  parse_memory_keys(r, m);
  // Mixture of experts (model.ffn = "moe").
  m.moe_num_experts = r.get_int("moe_num_experts", m.moe_num_experts, 1, 1024);
  m.moe_top_k = r.get_int("moe_top_k", m.moe_top_k, 1, 16);
  m.moe_hidden = r.get_int("moe_hidden", m.moe_hidden, 0, 1 << 20);
  m.moe_loss_weight = r.get_double("moe_loss_weight", m.moe_loss_weight, 0, 1e3);
  m.moe_zloss_weight = r.get_double("moe_zloss_weight", m.moe_zloss_weight, 0, 1e3);
  m.moe_renormalize = r.get_bool("moe_renormalize", m.moe_renormalize);
  m.moe_shared_expert_hidden = r.get_int("moe_shared_expert_hidden", m.moe_shared_expert_hidden, 0, 1 << 20);
  m.moe_capacity_factor = r.get_double("moe_capacity_factor", m.moe_capacity_factor, 0, 1e3);
  r.finish();
  validate_memory(m);
  if (m.moe_top_k > m.moe_num_experts)
    throw Error("model.moe_top_k", detail::concat("at most model.moe_num_experts (", m.moe_num_experts, ")"),
                std::to_string(m.moe_top_k));
  if (m.d_model % m.n_heads != 0)
    throw Error("model.d_model", detail::concat("a multiple of model.n_heads (", m.n_heads, ")"), std::to_string(m.d_model));
  if (m.n_heads % m.kv_heads() != 0)
    throw Error("model.n_kv_heads", detail::concat("a divisor of model.n_heads (", m.n_heads, ")"),
                std::to_string(m.n_kv_heads));
  if (m.pos_encoding == "rope" && m.head_dim() % 2 != 0)
    throw Error("model.pos_encoding", "an even head size (d_model / n_heads) for rope", std::to_string(m.head_dim()));
  return m;
}

static DataConfig parse_data(const json* obj) {
  JsonReader r(obj, "data");
  DataConfig d;
  const bool is_mixture = obj && obj->contains("train") && (*obj)["train"].is_object();
  const json* train = is_mixture ? r.get_object("train") : nullptr;
  if (train) {
    // A mixture {"name": {"path": "glob", "weight": w}, ...}; sources in alphabetical order (nlohmann::json
    // keeps object keys sorted), which fixes their order in checkpoints.
    for (auto it = train->begin(); it != train->end(); ++it) {
      if (!it.value().is_object())
        throw Error("data.train." + it.key(), "an object {\"path\": ..., \"weight\": ...}", it.value().type_name());
      JsonReader s(&it.value(), "data.train." + it.key());
      DataSourceConfig src;
      src.name = it.key();
      src.path = s.get_string("path", "");
      src.weight = s.get_double("weight", src.weight, 0, 1e12);
      s.finish();
      if (src.path.empty())
        throw Error("data.train." + it.key() + ".path", "paths or glob patterns of token files", "nothing");
      if (!(src.weight > 0))
        throw Error("data.train." + it.key() + ".weight", "a positive weight", std::to_string(src.weight));
      d.mixture.push_back(src);
    }
    if (d.mixture.empty()) throw Error("data.train", "at least one source in the mixture", "an empty object");
  } else {
    d.train = r.get_string("train", d.train);
  }
  d.val = r.get_string("val", d.val);
  d.seq_len = r.get_int("seq_len", d.seq_len, 1, 1 << 20);
  d.verify_checksum = r.get_bool("verify_checksum", d.verify_checksum);
  d.vocab_size = r.get_int("vocab_size", d.vocab_size, 0, (int64_t(1) << 32) - 1);
  d.eos_id = r.get_int("eos_id", d.eos_id, -1, (int64_t(1) << 32) - 1);
  r.finish();
  if (d.train.empty() && d.mixture.empty())
    throw Error("data.train", "paths or glob patterns of token shards (.bin) or arrays (.npy, .u16, .u32)", "nothing");
  if (d.vocab_size > 0 && d.eos_id >= d.vocab_size)
    throw Error("data.eos_id", detail::concat("an id below data.vocab_size (", d.vocab_size, ")"),
                std::to_string(d.eos_id));
  if (d.vocab_size == 0 && d.eos_id >= 0)
    throw Error("data.eos_id", "data.vocab_size to be set with it", "no data.vocab_size");
  return d;
}

static OptimConfig parse_optim(const json* obj) {
  JsonReader r(obj, "optim");
  OptimConfig o;
  o.lr = r.get_double("lr", o.lr, 0, 10);
  o.beta1 = r.get_double("beta1", o.beta1, 0, 0.999999);
  o.beta2 = r.get_double("beta2", o.beta2, 0, 0.999999);
  o.eps = r.get_double("eps", o.eps, 0, 1);
  o.weight_decay = r.get_double("weight_decay", o.weight_decay, 0, 10);
  o.decay_embeddings = r.get_bool("decay_embeddings", o.decay_embeddings);
  o.decay_norms_and_biases = r.get_bool("decay_norms_and_biases", o.decay_norms_and_biases);
  o.grad_clip = r.get_double("grad_clip", o.grad_clip, 0, 1e9);
  o.warmup_steps = r.get_int("warmup_steps", o.warmup_steps, 0, kBig);
  o.schedule = r.get_choice("schedule", o.schedule, {"cosine", "linear", "constant"});
  o.lr_end_ratio = r.get_double("lr_end_ratio", o.lr_end_ratio, 0, 1);
  o.mem_value_lr_times = r.get_double("mem_value_lr_times", o.mem_value_lr_times, 0, 1e6);
  o.mem_value_lr_max_steps_rate = r.get_double("mem_value_lr_max_steps_rate", o.mem_value_lr_max_steps_rate, 0, 1e6);
  o.mem_value_lr = r.get_double("mem_value_lr", o.mem_value_lr, 0, 10);
  r.finish();
  return o;
}

static RunConfig parse_run(const json* obj) {
  JsonReader r(obj, "train");
  RunConfig t;
  t.max_steps = r.get_int("max_steps", t.max_steps, 1, kBig);
  t.micro_batch = r.get_int("micro_batch", t.micro_batch, 1, 1 << 20);
  t.global_batch = r.get_int("global_batch", t.micro_batch, 1, 1 << 24);
  t.seed = uint64_t(r.get_int("seed", int64_t(t.seed), 0, std::numeric_limits<int64_t>::max()));
  t.device = r.get_choice("device", t.device, {"auto", "cpu", "cuda"});
  t.precision = r.get_choice("precision", t.precision, {"auto", "fp32", "bf16"});
  t.log_every = r.get_int("log_every", t.log_every, 1, kBig);
  t.val_every = r.get_int("val_every", t.val_every, 0, kBig);
  t.val_batches = r.get_int("val_batches", t.val_batches, 1, kBig);
  t.checkpoint_every = r.get_int("checkpoint_every", t.checkpoint_every, 0, kBig);
  t.keep_last = r.get_int("keep_last", t.keep_last, 1, 1 << 20);
  t.out_dir = r.get_string("out_dir", t.out_dir);
  t.peak_tflops = r.get_double("peak_tflops", t.peak_tflops, 0, 1e6);
  if (const json* nf = r.get_object("nonfinite")) {
    JsonReader n(nf, "train.nonfinite");
    t.nonfinite_policy = n.get_choice("policy", t.nonfinite_policy, {"stop", "skip"});
    t.nonfinite_max_skips = n.get_int("max_skips", t.nonfinite_max_skips, 0, kBig);
    n.finish();
  }
  t.check_memory = r.get_bool("check_memory", t.check_memory);
  r.finish();
  if (t.global_batch % t.micro_batch != 0)
    throw Error("train.global_batch", detail::concat("a multiple of train.micro_batch (", t.micro_batch, ")"),
                std::to_string(t.global_batch));
  if (t.out_dir.empty()) throw Error("train.out_dir", "a directory path", "an empty string");
  return t;
}

TrainConfig parse_config(const json& doc) {
  JsonReader r(&doc, "");
  TrainConfig c;
  c.model = parse_model(r.get_object("model"));
  c.data = parse_data(r.get_object("data"));
  c.optim = parse_optim(r.get_object("optim"));
  c.train = parse_run(r.get_object("train"));
  r.finish();
  if (c.model.pos_encoding == "learned" && c.data.seq_len > c.model.max_seq_len)
    throw Error("data.seq_len", detail::concat("at most model.max_seq_len (", c.model.max_seq_len, ") with learned positions"),
                std::to_string(c.data.seq_len));
  return c;
}

TrainConfig load_config(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path, "a readable JSON config file", "it cannot be opened");
  std::string text;
  try {
    text.assign(std::istreambuf_iterator<char>(in), {});
  } catch (const std::exception& e) {  // reading a directory throws from the stream buffer
    throw Error(path, "a readable JSON config file", e.what());
  }
  if (in.bad()) throw Error(path, "a readable JSON config file", "a read error");
  if (config::json_nesting_depth(text.data(), text.size()) > config::kMaxJsonDepth)
    throw Error(path, detail::concat("JSON nested at most ", config::kMaxJsonDepth, " levels deep"), "deeper nesting");
  json doc;
  try {
    doc = json::parse(text, nullptr, true, /*ignore_comments=*/true);
  } catch (const json::exception& e) {  // parse_error, and out_of_range for numbers beyond double (1e400)
    throw Error(path, "valid JSON", e.what());
  }
  for (const auto& o : overrides) config::apply_override(doc, o);
  try {
    return parse_config(doc);
  } catch (const Error& e) {
    throw Error(path + ": " + e.where(), e.expected(), e.found());
  }
}

data::RawTokenOptions raw_token_options(const DataConfig& d) {
  data::RawTokenOptions o;
  o.vocab_size = uint32_t(d.vocab_size);
  o.eos_id = d.eos_id >= 0 ? uint32_t(d.eos_id) : d.vocab_size > 0 ? uint32_t(d.vocab_size - 1) : 0;
  return o;
}

json to_json(const TrainConfig& c) {
  const auto& m = c.model;
  json j;
  j["model"] = {{"vocab_size", m.vocab_size}, {"valid_vocab", m.valid_vocab}, {"d_model", m.d_model},
                {"n_layers", m.n_layers}, {"n_heads", m.n_heads}, {"n_kv_heads", m.n_kv_heads},
                {"max_seq_len", m.max_seq_len}, {"norm", m.norm}, {"norm_affine", m.norm_affine},
                {"norm_eps", m.norm_eps}, {"pos_encoding", m.pos_encoding}, {"rope_theta", m.rope_theta},
                {"ffn", m.ffn}, {"mlp_act", m.mlp_act}, {"mlp_hidden", m.mlp_hidden}, {"bias", m.bias},
                {"tie_embeddings", m.tie_embeddings}, {"init_std", m.init_std}, {"init", m.init},
                {"dropout", m.dropout}};
  memory_to_json(m.mem, j["model"]);
  j["model"].update({{"moe_num_experts", m.moe_num_experts}, {"moe_top_k", m.moe_top_k}, {"moe_hidden", m.moe_hidden},
                     {"moe_loss_weight", m.moe_loss_weight}, {"moe_zloss_weight", m.moe_zloss_weight},
                     {"moe_renormalize", m.moe_renormalize}, {"moe_shared_expert_hidden", m.moe_shared_expert_hidden},
                     {"moe_capacity_factor", m.moe_capacity_factor}});
  const auto& d = c.data;
  j["data"] = {{"train", d.train}, {"val", d.val}, {"seq_len", d.seq_len}, {"verify_checksum", d.verify_checksum},
               {"vocab_size", d.vocab_size}, {"eos_id", d.eos_id}};
  if (!d.mixture.empty()) {
    json m = json::object();
    for (const auto& s : d.mixture) m[s.name] = {{"path", s.path}, {"weight", s.weight}};
    j["data"]["train"] = m;
  }
  const auto& o = c.optim;
  j["optim"] = {{"lr", o.lr}, {"beta1", o.beta1}, {"beta2", o.beta2}, {"eps", o.eps},
                {"weight_decay", o.weight_decay}, {"decay_embeddings", o.decay_embeddings},
                {"decay_norms_and_biases", o.decay_norms_and_biases}, {"grad_clip", o.grad_clip},
                {"warmup_steps", o.warmup_steps}, {"schedule", o.schedule}, {"lr_end_ratio", o.lr_end_ratio},
                {"mem_value_lr_times", o.mem_value_lr_times},
                {"mem_value_lr_max_steps_rate", o.mem_value_lr_max_steps_rate}, {"mem_value_lr", o.mem_value_lr}};
  const auto& t = c.train;
  j["train"] = {{"max_steps", t.max_steps}, {"micro_batch", t.micro_batch}, {"global_batch", t.global_batch},
                {"seed", t.seed}, {"device", t.device}, {"precision", t.precision}, {"log_every", t.log_every},
                {"val_every", t.val_every}, {"val_batches", t.val_batches}, {"checkpoint_every", t.checkpoint_every},
                {"keep_last", t.keep_last}, {"out_dir", t.out_dir}, {"peak_tflops", t.peak_tflops},
                {"nonfinite", {{"policy", t.nonfinite_policy}, {"max_skips", t.nonfinite_max_skips}}},
                {"check_memory", t.check_memory}};
  return j;
}

}  // namespace um::train
