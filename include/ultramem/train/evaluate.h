// Mean next-token loss of a model over consecutive windows of a loader: shared by the trainer's
// periodic validation and ultramem-eval, so both report the same number on the same data.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "ultramem/data/loader.h"
#include "ultramem/nn/parameters.h"
#include "ultramem/nn/transformer.h"
#include "ultramem/train/config.h"

namespace um::train {

struct EvalResult {
  double loss = 0;  // mean over tokens
  int64_t tokens = 0;
  int64_t batches = 0;
};

// Reads up to max_batches micro-batches of micro_batch windows (all when max_batches <= 0).
EvalResult evaluate_loss(nn::Transformer& model, data::TokenLoader& loader, int64_t micro_batch, int64_t max_batches,
                         Device device);

// One row of a per-source evaluation (or the total over all rows).
struct SourceResult {
  std::string source;
  std::vector<std::string> files;
  EvalResult eval;
  double text_bytes = 0;  // UTF-8 bytes of the evaluated tokens from the manifest; 0 = unknown
  // loss (nats/token) * tokens / (ln 2 * bytes); NaN without byte counts.
  double bits_per_byte() const;
};

struct EvalOptions {
  int64_t seq_len = 1024;
  int64_t micro_batch = 8;
  int64_t max_tokens = 0;  // per source, rounded down to whole micro-batches (at least one); 0 = all
  bool verify_checksum = true;
  data::RawTokenOptions raw;
};

// Evaluates each source (data::group_by_source of `files`) over its leading windows in file order,
// as Trainer::validate() reads data.val.
std::vector<SourceResult> evaluate_sources(nn::Transformer& model, const std::vector<std::string>& files,
                                           const EvalOptions& opt, Device device);
// The token-weighted total of per-source rows (bits per byte only when every row has byte counts).
SourceResult total_result(const std::vector<SourceResult>& rows);

// A checkpoint's model, ready for evaluation: weights in the checkpoint's config, compute in bf16 on
// the GPU and fp32 on the CPU (as the trainer's "auto" precision).
struct LoadedModel {
  TrainConfig config;
  nn::ParameterStore params;
  std::unique_ptr<nn::Transformer> model;
};
std::unique_ptr<LoadedModel> load_model(const std::string& checkpoint_dir, Device device);

}  // namespace um::train
