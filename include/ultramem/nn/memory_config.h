// The memory-layer half of the model config: the original UltraMem code's `mem_*` keys with the same
// meanings (docs/memory-layers.md, docs/config.md), and where the layers sit in the model.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace um::nn {

struct MemoryConfig {
  std::string type = "none";        // mem_type: "none" | "memory_plus" | "ultramem_v1" | "ultramem_v2"
  std::string insert_way = "full";  // mem_insert_way: "full" | "a:b/c:d/..." | "no_mem"
  int64_t knum = 0;                 // mem_knum: keys per side (before expansion / sharing)
  int64_t kdim = 0;                 // mem_kdim: K
  int64_t vdim = 0;                 // mem_vdim: V
  int64_t pre_vdim = 0;             // mem_pre_vdim: UltraMemV2 pre-value size (0 = no pre-values)
  int64_t knn = 32;                 // mem_knn
  int64_t head = 1;                 // mem_head
  double share_ratio = 1.0;         // mem_share_ratio (UltraMemV2)
  int64_t value_expand_time = 1;    // mem_value_expand_time: E output groups
  int64_t key_expand_time = 1;      // mem_key_expand_time: keys per side x this (v2; v1 derives it from E)
  int64_t tucker_rank = 2;          // mem_tucker_rank: r (UltraMem v1/v2)
  int64_t tucker_multihead = 2;     // mem_tucker_multihead: h cores
  double tucker_rank_penalty = 0;   // mem_tucker_rank_penalty: alpha of the aux loss on the cores
  double tucker_margin = 0.15;      // mem_tucker_margin: tau of that loss
  double key_balance_reg_coef = 0;  // mem_key_balance_reg_coef
  bool use_glu_act = false;         // mem_use_glu_act: GELU on the pre-value gate
  bool q_for_each_tucker_rank = false;  // mem_q_for_each_tucker_rank: a query per Tucker rank
  int64_t log_interval = 50;        // mem_log_interval: window (steps) of the value-usage statistic

  bool enabled() const { return type != "none" && insert_way != "no_mem"; }
  bool tucker() const { return type == "ultramem_v1" || type == "ultramem_v2"; }
};

// One memory layer's placement: it reads block `read`'s FFN input (after the FFN pre-norm) and its
// output is added to the residual stream after block `write` (read == write for "full").
struct MemoryPlacement {
  int64_t read = 0, write = 0;
};

// Parses mem_insert_way for a model of n_layers blocks; errors name `where` and what is expected.
std::vector<MemoryPlacement> memory_placements(const MemoryConfig& m, int64_t n_layers, const std::string& where);

}  // namespace um::nn
