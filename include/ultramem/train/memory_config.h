// The memory-layer keys of the config (model.mem_*, optim.mem_value_*): parsing with the validating
// reader, and the resolved form written with every run.
#pragma once
#include <nlohmann/json.hpp>

#include "ultramem/config/json_reader.h"
#include "ultramem/nn/model_config.h"

namespace um::train {

// Reads model.mem_* from `r` (the "model" object's reader, before its finish()) into m.mem and checks
// them against the rest of the model (errors name the key and what is expected).
void parse_memory_keys(config::JsonReader& r, nn::ModelConfig& m);
void validate_memory(const nn::ModelConfig& m);
// Adds the mem_* keys to the resolved "model" object.
void memory_to_json(const nn::MemoryConfig& mem, nlohmann::json& model);

}  // namespace um::train
