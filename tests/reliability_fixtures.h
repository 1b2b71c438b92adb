// Shared by the reliability tests: a model small enough that a checkpoint is a few hundred KB, on
// real text (the Shakespeare sample's GPT-2 ids folded into a 512-token vocabulary).
#pragma once
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "ultramem/data/shard.h"
#include "ultramem/train/config.h"

namespace um::testing {

// A fresh directory under the build directory (where ultramem-train is), whatever the working directory.
inline std::string fresh_run_dir(const std::string& name) {
  std::filesystem::path p = std::filesystem::path(ULTRAMEM_TRAIN_BIN).parent_path() / "reliability-runs" /
                            (name + "-" + std::to_string(::getpid()));
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p.string();
}

// The Shakespeare sample folded into vocabulary 512 (eos 511), written once per process.
inline std::string small_vocab_shard() {
  static const std::string path = [] {
    std::string dir = fresh_run_dir("data");
    data::Shard src(std::string(ULTRAMEM_SOURCE_DIR) + "/data_tools/sample/shakespeare-train.bin", false);
    const uint64_t n = std::min<uint64_t>(src.size(), 60000);
    std::vector<uint32_t> toks(n);
    for (uint64_t i = 0; i < n; ++i) {
      uint32_t t = src.token(i);
      toks[i] = t == src.eos_id() ? 511u : t % 511u;
    }
    std::string p = dir + "/small-vocab.bin";
    data::write_shard(p, toks, 512, 511, 1);
    return p;
  }();
  return path;
}

// Two blocks, d 32, RoPE, SwiGLU, dropout (its RNG must resume too), gradient accumulation (2 micro-batches).
inline nlohmann::json small_config_json(const std::string& out_dir, const std::string& device, int64_t max_steps) {
  return {{"model", {{"vocab_size", 512}, {"d_model", 32}, {"n_layers", 2}, {"n_heads", 2}, {"max_seq_len", 32},
                     {"norm", "rmsnorm"}, {"pos_encoding", "rope"}, {"mlp_act", "swiglu"}, {"mlp_hidden", 64},
                     {"bias", false}, {"dropout", 0.1}}},
          {"data", {{"train", small_vocab_shard()}, {"seq_len", 32}}},
          {"optim", {{"lr", 3e-3}, {"warmup_steps", 2}}},
          {"train", {{"max_steps", max_steps}, {"micro_batch", 2}, {"global_batch", 4}, {"seed", 5}, {"device", device},
                     {"out_dir", out_dir}, {"keep_last", 2}, {"log_every", 1000}}}};
}

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

}  // namespace um::testing
