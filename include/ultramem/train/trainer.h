// The training loop: config -> device, model, optimizer, loaders; then steps of gradient
// accumulation, clipping and AdamW, with progress lines, a JSONL metrics log, periodic validation
// and checkpoints, and exact resume.
#pragma once
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "ultramem/data/loader.h"
#include "ultramem/data/prefetcher.h"
#include "ultramem/io/checkpoint.h"
#include "ultramem/nn/parameters.h"
#include "ultramem/nn/transformer.h"
#include "ultramem/optim/adamw.h"
#include "ultramem/train/config.h"

namespace um::train {

struct StepStats {
  int64_t step = 0;  // optimizer steps completed
  double loss = 0, lr = 0, grad_norm = 0, tokens_per_s = 0, mfu = 0, step_seconds = 0;
};

class Trainer {
 public:
  // resume: continue from out_dir's latest checkpoint (an error when there is none).
  Trainer(const TrainConfig& cfg, bool resume, bool quiet = false);
  ~Trainer();

  // Trains to train.max_steps (or `steps` more steps when > 0), validating and checkpointing as configured.
  void run(int64_t steps = 0);
  // One optimizer step (gradient accumulation over micro-batches included).
  StepStats step();
  // Mean loss over the first train.val_batches micro-batches of data.val.
  double validate();
  void save_checkpoint();

  int64_t completed_steps() const { return step_; }
  Device device() const { return device_; }
  nn::ParameterStore& params() { return ps_; }
  const TrainConfig& config() const { return cfg_; }
  size_t arena_peak_bytes() const;

 private:
  void load_batch();
  nlohmann::json trainer_state() const;
  void log_step(const StepStats& s);
  std::vector<optim::AdamWGroup> groups_for_lr(double lr) const;

  TrainConfig cfg_;
  bool quiet_;
  Device device_;
  DType compute_dtype_;
  nn::ParameterStore ps_;
  std::unique_ptr<nn::Transformer> model_;
  io::OptimizerState opt_;
  std::unique_ptr<data::TokenLoader> train_loader_;
  std::unique_ptr<data::BatchPrefetcher> prefetcher_;  // reads train_loader_ ahead; declared after it: stops first
  Tensor ids_, targets_;  // device copies of the current micro-batch, allocated once
  int64_t step_ = 0, tokens_seen_ = 0, accum_steps_ = 1;
  double peak_flops_ = 0, elapsed_ = 0;
  struct WeightDecayRange {
    int64_t begin, end;
    bool decay;
  };
  std::vector<WeightDecayRange> ranges_;
};

}  // namespace um::train
