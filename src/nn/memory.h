// The memory layers of a model (Memory+, UltraMem v1, UltraMemV2): their parameters, value pools,
// placement, forward pass, per-step Tucker update and health statistics. Math and layout:
// shared/specs/ultramem.md and docs/memory-layers.md.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "ultramem/nn/model_config.h"
#include "ultramem/nn/parameters.h"
#include "ultramem/nn/registry.h"

namespace um::nn {

// The sizes one memory layer works with, derived from the config (docs/memory-layers.md, "Geometry").
struct MemoryGeometry {
  int64_t n = 0;            // keys per side
  int64_t value_num = 0;    // physical rows the layer addresses
  int64_t virtual_num = 0;  // n^2 grid positions (virtual rows)
  int64_t groups = 1;       // output groups (values_proj input = groups x vdim)
  int64_t offset = 0;       // first row in its pool
  int64_t pool = 0;         // which value pool (Memory+/v2: one shared pool; v1: one per layer)
  int64_t pool_rows = 0;    // rows of that pool
  int64_t rank = 1, q_ranks = 1, cores = 1;
};
MemoryGeometry memory_geometry(const ModelConfig& cfg, int64_t layer, int64_t n_mem_layers);

class MemorySystem {
 public:
  MemorySystem(const ModelConfig& cfg, ParameterStore& ps);
  ~MemorySystem();
  const std::vector<MemoryPlacement>& placements() const { return placements_; }
  bool empty() const { return placements_.empty(); }
  // Layer `i`'s output [B, T, d] for the FFN pre-norm output h [B, T, d] of its read block.
  Tensor forward(size_t i, const Tensor& h, StepContext& ctx);
  // Once per optimizer step, before the forward passes: refreshes each UltraMem layer's rank-1
  // pre-selection vectors u, v from its cores (sign kept consistent with the previous step).
  void begin_step();
  // Matmul FLOPs per token, forward + backward (for MFU).
  double flops_per_token() const;

 private:
  struct Layer;
  struct Pool;
  void pool_stats(StepContext& ctx);
  ModelConfig cfg_;
  std::vector<MemoryPlacement> placements_;
  std::vector<std::unique_ptr<Layer>> layers_;
  std::vector<std::unique_ptr<Pool>> pools_;
};

}  // namespace um::nn
