// Checkpoints: <out_dir>/checkpoints/step-NNNNNNNN/ holding
//   model.safetensors      f32 master weights under the parameters' names (loadable from PyTorch)
//   optimizer.safetensors  AdamW moments "<name>.exp_avg", "<name>.exp_avg_sq"
//   trainer.json           step, tokens seen, loader state, the resolved config
// The directory is written under a temporary name and renamed when complete; the text file
// `latest` (replaced atomically) names the newest. Only the newest keep_last are kept.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "ultramem/nn/parameters.h"

namespace um::io {

struct OptimizerState {
  Tensor m, v;  // flat f32, same layout as the parameter store
};

// Writes step `step`'s checkpoint and prunes old ones; returns its directory.
std::string save_checkpoint(const std::string& out_dir, int64_t step, const nn::ParameterStore& ps,
                            const OptimizerState& opt, const nlohmann::json& trainer_state, int64_t keep_last);

// The directory `latest` names under out_dir/checkpoints, or "" when there is none.
std::string latest_checkpoint(const std::string& out_dir);

// Loads weights (and moments when opt is non-null) into the store, checking every name, shape and
// dtype; returns trainer.json. Errors name the file and the tensor.
nlohmann::json load_checkpoint(const std::string& dir, nn::ParameterStore& ps, OptimizerState* opt);

}  // namespace um::io
