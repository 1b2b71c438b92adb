// Mean next-token loss of a model over consecutive windows of a loader: shared by the trainer's
// periodic validation and ultramem-eval, so both report the same number on the same data.
#pragma once
#include "ultramem/data/loader.h"
#include "ultramem/nn/transformer.h"

namespace um::train {

struct EvalResult {
  double loss = 0;  // mean over tokens
  int64_t tokens = 0;
  int64_t batches = 0;
};

// Reads up to max_batches micro-batches of micro_batch windows (all when max_batches <= 0).
EvalResult evaluate_loss(nn::Transformer& model, data::TokenLoader& loader, int64_t micro_batch, int64_t max_batches,
                         Device device);

}  // namespace um::train
