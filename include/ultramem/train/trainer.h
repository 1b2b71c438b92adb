// The training loop: config -> device, model, optimizer, loaders; then steps of gradient
// accumulation, clipping and AdamW, with progress lines, a JSONL metrics log, periodic validation
// and checkpoints, and exact resume.
#pragma once
#include <map>
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
  double loss = 0, lr = 0, grad_norm = 0, tokens_per_s = 0, mfu = 0, step_seconds = 0;  // loss: cross-entropy
  std::map<std::string, double> aux;  // auxiliary losses by name (already weighted), mean over micro-batches
  nlohmann::json stats;               // layers' health statistics on logged steps (empty otherwise)
  bool skipped = false;  // a non-finite loss or gradient: no update (train.nonfinite.policy "skip")
  std::string nonfinite;  // what was non-finite, naming the micro-batch or the first parameter
};

// Test hooks (tests/test_reliability.cpp): make a step's loss or a parameter's gradient non-finite.
struct TrainerFaults {
  std::vector<int64_t> nan_loss_steps;  // 1-based steps whose first micro-batch loss reads NaN
  std::vector<int64_t> nan_grad_steps;  // 1-based steps whose gradient of nan_grad_param becomes NaN
  std::string nan_grad_param;
};

class Trainer {
 public:
  // resume: continue from out_dir's latest checkpoint (an error when there is none).
  Trainer(const TrainConfig& cfg, bool resume, bool quiet = false);
  ~Trainer();

  // Trains to train.max_steps (or `steps` more steps when > 0), validating and checkpointing as configured.
  // A stop request (SIGINT/SIGTERM, train/reliability.h) ends it after the step in flight with a
  // checkpoint; stopped_by_signal() then names the signal.
  void run(int64_t steps = 0);
  // One optimizer step (gradient accumulation over micro-batches included). A non-finite loss or
  // gradient is handled by train.nonfinite: a skipped step (StepStats::skipped), or NonFiniteStop
  // thrown after the last good state was saved.
  StepStats step();
  // Mean loss over the first train.val_batches micro-batches of data.val.
  double validate();
  void save_checkpoint();

  int64_t completed_steps() const { return step_; }
  Device device() const { return device_; }
  nn::ParameterStore& params() { return ps_; }
  const TrainConfig& config() const { return cfg_; }
  size_t arena_peak_bytes() const;
  int stopped_by_signal() const { return stopped_by_signal_; }
  int64_t skipped_steps() const { return skipped_steps_; }
  const io::OptimizerState& optimizer_state() const { return opt_; }
  TrainerFaults& faults() { return faults_; }

 private:
  void load_batch();
  nlohmann::json trainer_state() const;
  nlohmann::json trainer_state(const data::LoaderState& loader) const;
  void handle_nonfinite(StepStats& s, const data::LoaderState& before);
  void log_step(const StepStats& s);
  bool is_log_step(int64_t step) const;  // console progress and layer statistics on this step
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
  int64_t skipped_steps_ = 0;      // steps without an update (non-finite), over the whole run
  int64_t last_saved_step_ = -1;   // the step of the newest checkpoint this process wrote
  int stopped_by_signal_ = 0;
  TrainerFaults faults_;
  // Contiguous runs of the flat parameter buffer that share an optimizer treatment.
  enum class LrGroup { base, memory_value, frozen };  // frozen: buffers (lr 0)
  struct ParamRange {
    int64_t begin, end;
    bool decay;
    LrGroup group;
  };
  std::vector<ParamRange> ranges_;
  double memory_value_lr(double lr) const;  // the value tables' lr at this step (see OptimConfig)
};

}  // namespace um::train
