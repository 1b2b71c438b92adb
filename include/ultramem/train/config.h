// The whole training config: one JSON file (sections model, data, optim, train), validated up front.
// Every key, its default and range: docs/config.md.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "ultramem/data/token_source.h"
#include "ultramem/nn/model_config.h"

namespace um::train {

// One source of a training mixture (data.train given as an object).
struct DataSourceConfig {
  std::string name;
  std::string path;  // comma-separated paths or glob patterns
  double weight = 1;
};

struct DataConfig {
  std::string train;  // comma-separated paths or glob patterns of token files (empty when `mixture` is set)
  std::vector<DataSourceConfig> mixture;  // data.train as {"name": {"path": ..., "weight": ...}, ...}
  std::string val;    // same, may be empty (no validation)
  int64_t seq_len = 1024;
  bool verify_checksum = true;
  int64_t vocab_size = 0;  // vocabulary of raw token arrays (.npy/.u16/.u32); 0 = shards only
  int64_t eos_id = -1;     // their end-of-document id; -1 = vocab_size - 1
};

struct OptimConfig {
  double lr = 6e-4;
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double weight_decay = 0.1;
  bool decay_embeddings = false;      // weight decay on embeddings
  bool decay_norms_and_biases = false;
  double grad_clip = 1.0;             // global-norm clipping; 0 = off
  int64_t warmup_steps = 0;
  std::string schedule = "cosine";    // "cosine" | "linear" | "constant"
  double lr_end_ratio = 0.1;          // final lr / peak lr
  // Memory value tables (values, pre-values): lr x a multiplier that decays linearly from
  // mem_value_lr_times to 1 at step max_steps x mem_value_lr_max_steps_rate, under the same
  // warmup/cosine schedule; or, when mem_value_lr > 0, that constant lr (Memory+'s 1e-3).
  double mem_value_lr_times = 1.0;
  double mem_value_lr_max_steps_rate = 1.0;
  double mem_value_lr = 0.0;
};

struct RunConfig {
  int64_t max_steps = 1000;
  int64_t micro_batch = 8;    // sequences per forward/backward
  int64_t global_batch = 8;   // sequences per optimizer step (a multiple of micro_batch x world size)
  uint64_t seed = 1;
  std::string device = "auto";     // "auto" (GPU if present) | "cpu" | "cuda"
  std::string precision = "auto";  // "auto" (bf16 on GPU, fp32 on CPU) | "fp32" | "bf16"
  int64_t log_every = 10;
  int64_t val_every = 0;      // 0 = only at the end (when data.val is set)
  int64_t val_batches = 8;
  int64_t checkpoint_every = 0;  // 0 = only at the end
  int64_t keep_last = 3;
  std::string out_dir = "runs/default";
  double peak_tflops = 0;     // for MFU; 0 = from the GPU's name (H100/H200 bf16 dense 989)
  // A non-finite loss or gradient (train.nonfinite): "stop" saves the last good state and stops;
  // "skip" drops that step's update (its data is consumed) up to max_skips times in the run, then stops.
  std::string nonfinite_policy = "stop";
  int64_t nonfinite_max_skips = 10;
  bool check_memory = true;   // refuse a config whose estimated GPU memory exceeds the free memory
};

struct TrainConfig {
  nn::ModelConfig model;
  DataConfig data;
  OptimConfig optim;
  RunConfig train;
};

// Parses and validates; errors name `source` and the key path.
TrainConfig parse_config(const nlohmann::json& doc);
// Reads `path`, applies --set overrides ("a.b=value"), parses.
TrainConfig load_config(const std::string& path, const std::vector<std::string>& overrides);
// The vocabulary of raw token arrays from data.vocab_size / data.eos_id (eos -1 -> vocab_size - 1).
data::RawTokenOptions raw_token_options(const DataConfig& d);
// The resolved config, every default written out (saved with every run and checkpoint).
nlohmann::json to_json(const TrainConfig& c);

}  // namespace um::train
