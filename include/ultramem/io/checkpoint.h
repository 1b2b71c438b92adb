// Checkpoints: <out_dir>/checkpoints/step-NNNNNNNN/ holding
//   model.safetensors      f32 master weights under the parameters' names (loadable from PyTorch)
//   optimizer.safetensors  AdamW moments "<name>.exp_avg", "<name>.exp_avg_sq"
//   trainer.json           step, tokens seen, loader state, RNG seeds, LR schedule position, the resolved config
//   config.json            the resolved config alone
//   manifest.json          format version, step, and every other file's size and checksum (io/checksum.h)
// The directory is written under a temporary name (step-N.tmp), every file fsynced, then renamed; the
// text file `latest` (replaced atomically) names the newest. Only the newest keep_last are kept. A
// process killed at any moment leaves the previous checkpoint loadable; a failed write (full disk)
// removes the partial directory and throws, naming the cause and the checkpoint that survives.
// Loading verifies the manifest's sizes and checksums, then every tensor's name, shape and dtype.
// Checkpoints of format 1 (before manifests) load without checksum verification. Format 3 stores the MoE
// experts' w2 as [E, h, d] (OLMo-core's layout), formats 1 and 2 as [E, d, h]: an older checkpoint of a
// model with experts is refused by name (where h == d it would otherwise load transposed); one without
// experts loads as before.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "ultramem/nn/parameters.h"

namespace um::io {

struct OptimizerState {
  Tensor m, v;  // flat f32, same layout as the parameter store
};

constexpr int kCheckpointFormat = 3;

struct CheckpointFile {
  std::string name;  // a plain file name inside the checkpoint directory
  uint64_t bytes = 0;
  uint64_t checksum = 0;
};

struct CheckpointManifest {
  int format = kCheckpointFormat;
  int64_t step = 0;
  std::vector<CheckpointFile> files;
  const CheckpointFile* find(const std::string& name) const;
};

// Writes step `step`'s checkpoint and prunes old ones; returns its directory. trainer_state["config"],
// when present, is also written as config.json.
std::string save_checkpoint(const std::string& out_dir, int64_t step, const nn::ParameterStore& ps,
                            const OptimizerState& opt, const nlohmann::json& trainer_state, int64_t keep_last);

// The checkpoint to resume from under out_dir/checkpoints: the one `latest` names when it is complete
// (has its manifest), else (a save interrupted between its renames, a damaged `latest`) the newest
// complete step-* directory, with a warning on stderr; "" when there is none.
std::string latest_checkpoint(const std::string& out_dir);

// Validates manifest.json's text; errors name `path` and the field.
CheckpointManifest parse_checkpoint_manifest(const std::string& text, const std::string& path);

// Reads dir/manifest.json and checks the listed files (all, or only those named in `only`): present,
// of the recorded size and checksum. Errors name the file and what differs. A directory without a
// manifest (format 1) returns format 1 and checks nothing.
CheckpointManifest verify_checkpoint(const std::string& dir, const std::vector<std::string>& only = {});

// Verifies the files it reads, then loads weights (and moments when opt is non-null) into the store,
// checking every name, shape and dtype; returns trainer.json. Errors name the file and the tensor.
nlohmann::json load_checkpoint(const std::string& dir, nn::ParameterStore& ps, OptimizerState* opt);

}  // namespace um::io
