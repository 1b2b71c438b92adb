#include "ultramem/train/memory_config.h"

#include <cmath>

#include "ultramem/core/check.h"
#include "src/nn/memory.h"

namespace um::train {

void parse_memory_keys(config::JsonReader& r, nn::ModelConfig& m) {
  nn::MemoryConfig& c = m.mem;
  c.type = r.get_choice("mem_type", c.type, {"none", "memory_plus", "ultramem_v1", "ultramem_v2"});
  c.insert_way = r.get_string("mem_insert_way", c.insert_way);
  c.knum = r.get_int("mem_knum", c.knum, 0, 1 << 20);
  c.kdim = r.get_int("mem_kdim", c.kdim, 0, 1 << 14);
  c.vdim = r.get_int("mem_vdim", c.vdim, 0, 1 << 16);
  c.pre_vdim = r.get_int("mem_pre_vdim", c.pre_vdim, 0, 1 << 16);
  c.knn = r.get_int("mem_knn", c.knn, 1, 64);
  c.head = r.get_int("mem_head", c.head, 1, 8);
  c.share_ratio = r.get_double("mem_share_ratio", c.share_ratio, 1e-6, 1.0);
  c.value_expand_time = r.get_int("mem_value_expand_time", c.value_expand_time, 1, 64);
  c.key_expand_time = r.get_int("mem_key_expand_time", c.key_expand_time, 1, 8);
  c.tucker_rank = r.get_int("mem_tucker_rank", c.tucker_rank, 1, 4);
  c.tucker_multihead = r.get_int("mem_tucker_multihead", c.tucker_multihead, 1, 4);
  c.tucker_rank_penalty = r.get_double("mem_tucker_rank_penalty", c.tucker_rank_penalty, 0, 1e6);
  c.tucker_margin = r.get_double("mem_tucker_margin", c.tucker_margin, 0, 1e6);
  c.key_balance_reg_coef = r.get_double("mem_key_balance_reg_coef", c.key_balance_reg_coef, 0, 1e6);
  c.use_glu_act = r.get_bool("mem_use_glu_act", c.use_glu_act);
  c.q_for_each_tucker_rank = r.get_bool("mem_q_for_each_tucker_rank", c.q_for_each_tucker_rank);
  c.log_interval = r.get_int("mem_log_interval", c.log_interval, 1, int64_t(1) << 40);
}

static void require(bool ok, const char* key, const std::string& expected, const std::string& found) {
  if (!ok) throw Error(std::string("model.") + key, expected, found);
}

void validate_memory(const nn::ModelConfig& m) {
  const nn::MemoryConfig& c = m.mem;
  if (!c.enabled()) return;
  const std::string type = "mem_type \"" + c.type + "\"";
  require(c.knum >= 2, "mem_knum", "at least 2 keys per side for " + type, std::to_string(c.knum));
  require(c.kdim >= 1, "mem_kdim", "a key size >= 1 for " + type, std::to_string(c.kdim));
  require(c.vdim >= 1, "mem_vdim", "a value size >= 1 for " + type, std::to_string(c.vdim));
  require(c.knn <= c.knum, "mem_knn", detail::concat("at most mem_knum (", c.knum, ")"), std::to_string(c.knn));
  if (c.type == "memory_plus") {
    require(c.vdim == m.d_model, "mem_vdim", detail::concat("model.d_model (", m.d_model, ") for memory_plus"),
            std::to_string(c.vdim));
    require(c.pre_vdim == 0, "mem_pre_vdim", "0 for memory_plus (pre-values are UltraMemV2's)", std::to_string(c.pre_vdim));
    require(c.value_expand_time == 1, "mem_value_expand_time", "1 for memory_plus", std::to_string(c.value_expand_time));
    require(c.key_expand_time == 1, "mem_key_expand_time", "1 for memory_plus", std::to_string(c.key_expand_time));
  }
  if (c.tucker()) {
    require(c.vdim % c.tucker_multihead == 0, "mem_vdim",
            detail::concat("a multiple of mem_tucker_multihead (", c.tucker_multihead, "): each core weighs one chunk"),
            std::to_string(c.vdim));
  }
  if (c.type == "ultramem_v1") {
    const int64_t root = int64_t(std::llround(std::sqrt(double(c.value_expand_time))));
    require(root * root == c.value_expand_time, "mem_value_expand_time",
            "a square (keys per side grow by its square root)", std::to_string(c.value_expand_time));
    require(c.pre_vdim == 0, "mem_pre_vdim", "0 for ultramem_v1 (pre-values are UltraMemV2's)", std::to_string(c.pre_vdim));
    require(c.key_expand_time == 1, "mem_key_expand_time", "1 for ultramem_v1 (it expands by mem_value_expand_time)",
            std::to_string(c.key_expand_time));
  }
  if (c.type == "ultramem_v2") {
    const int64_t e2 = c.key_expand_time * c.key_expand_time;
    require(c.value_expand_time == 1 || c.value_expand_time == e2, "mem_value_expand_time",
            detail::concat("1 or mem_key_expand_time^2 (", e2, ")"), std::to_string(c.value_expand_time));
  }
  const int64_t layers = int64_t(nn::memory_placements(c, m.n_layers, "model.mem_insert_way").size());
  // The derived keys per side (after expansion and sharing) bound the picks and the i32 grid indices.
  const nn::MemoryGeometry g = nn::memory_geometry(m, 0, layers);
  require(c.knn <= g.n, "mem_knn", detail::concat("at most the ", g.n, " keys per side this layout gives"),
          std::to_string(c.knn));
  require(g.virtual_num < (int64_t(1) << 31), "mem_knum",
          detail::concat("a size whose grid of (keys per side)^2 = ", g.virtual_num, " fits below 2^31"),
          std::to_string(c.knum));
  require(g.pool_rows < (int64_t(1) << 31), "mem_knum",
          detail::concat("a pool below 2^31 rows (this one has ", g.pool_rows, ")"), std::to_string(c.knum));
}

void memory_to_json(const nn::MemoryConfig& c, nlohmann::json& j) {
  j["mem_type"] = c.type;
  j["mem_insert_way"] = c.insert_way;
  j["mem_knum"] = c.knum;
  j["mem_kdim"] = c.kdim;
  j["mem_vdim"] = c.vdim;
  j["mem_pre_vdim"] = c.pre_vdim;
  j["mem_knn"] = c.knn;
  j["mem_head"] = c.head;
  j["mem_share_ratio"] = c.share_ratio;
  j["mem_value_expand_time"] = c.value_expand_time;
  j["mem_key_expand_time"] = c.key_expand_time;
  j["mem_tucker_rank"] = c.tucker_rank;
  j["mem_tucker_multihead"] = c.tucker_multihead;
  j["mem_tucker_rank_penalty"] = c.tucker_rank_penalty;
  j["mem_tucker_margin"] = c.tucker_margin;
  j["mem_key_balance_reg_coef"] = c.key_balance_reg_coef;
  j["mem_use_glu_act"] = c.use_glu_act;
  j["mem_q_for_each_tucker_rank"] = c.q_for_each_tucker_rank;
  j["mem_log_interval"] = c.log_interval;
}

}  // namespace um::train
