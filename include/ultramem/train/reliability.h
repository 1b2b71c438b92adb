// The trainer's safety nets (docs/reliability.md): stop requests from SIGINT/SIGTERM, the
// non-finite policy, the up-front GPU-memory estimate, and the resume-time repairs of a run directory.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "ultramem/core/dtype.h"
#include "ultramem/train/config.h"

namespace um::train {

// ---- stop requests ----
// SIGINT and SIGTERM set a flag (nothing else happens in the handler); the trainer finishes the step
// in flight, saves a checkpoint and returns. The handlers are installed with SA_RESETHAND, so a second
// signal has its default effect (immediate exit): safe, since checkpoints are atomic.
void install_stop_signal_handlers();
void request_stop(int signal_number);  // what the handlers call; tests call it directly
int stop_requested();                  // the signal number, 0 when none
void clear_stop_request();

// ---- non-finite losses and gradients ----
// Thrown (after the last good state was saved) when train.nonfinite.policy is "stop", or when "skip"
// ran out of train.nonfinite.max_skips. what() names the step and the first non-finite parameter.
class NonFiniteStop : public Error {
 public:
  using Error::Error;
};

// ---- GPU memory ----
struct MemoryEstimate {
  int64_t parameters = 0;       // flat parameter elements (with alignment padding)
  double weights = 0;           // f32 master weights
  double gradients = 0;         // f32 gradients
  double optimizer = 0;         // AdamW exp_avg + exp_avg_sq, f32
  double compute_copy = 0;      // bf16 copy under mixed precision
  double activations = 0;       // the per-micro-batch arena peak (forward + backward), with its growth slack
  double workspace = 0;         // cuBLASLt / attention workspaces, loader buffers, allocator slack
  double total() const { return weights + gradients + optimizer + compute_copy + activations + workspace; }
  std::string describe() const;  // "weights 1.2 GiB, gradients ..., total 9.9 GiB"
};
// Estimates device memory for one training process of `cfg` with `flat_parameters` parameter elements
// (ParameterStore::flat_numel(), known before allocation) in `compute` dtype.
MemoryEstimate estimate_memory(const TrainConfig& cfg, int64_t flat_parameters, DType compute);
// Activation bytes alone (no slack), as Arena::peak_bytes() would report them; exposed for the test
// that compares it with a measured CPU step.
double estimate_activation_bytes(const TrainConfig& cfg, DType compute);
// Throws an Error naming the config keys to change when the estimate exceeds the free device memory.
void check_memory_fits(const MemoryEstimate& e, size_t free_bytes, size_t total_bytes, const TrainConfig& cfg,
                       const std::string& device_name);

// ---- resuming a run directory ----
// Rewrites out_dir/metrics.jsonl (atomically) keeping the lines of steps <= `step`: lines a killed run
// wrote after its last checkpoint, and a torn last line, go, so the log of a resumed run equals the log
// of an uninterrupted one (timings aside).
void truncate_metrics(const std::string& out_dir, int64_t step);
// Leaf key paths ("optim.lr") whose values differ between two resolved configs.
std::vector<std::string> config_differences(const nlohmann::json& a, const nlohmann::json& b);

}  // namespace um::train
