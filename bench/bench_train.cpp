// End-to-end training throughput: ultramem-train's step on a config, on random tokens, reported as
// tokens/s, MFU and memory. Usage: bench-train CONFIG.json [--batch B] [--seq T] [--steps N]
// [--set key=value ...]. Prints one JSON line per run and a table last.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "ultramem/data/shard.h"
#include "ultramem/train/trainer.h"

namespace fs = std::filesystem;

int main(int argc, char** argv) {
  if (argc < 2) {
    std::puts("usage: bench-train CONFIG.json [--batch B] [--seq T] [--steps N] [--warmup N] [--set key=value ...]");
    return 2;
  }
  std::string config = argv[1];
  int64_t batch = 0, seq = 0, steps = 20, warmup = 5;
  std::vector<std::string> overrides;
  for (int i = 2; i + 1 < argc; i += 2) {
    std::string a = argv[i], v = argv[i + 1];
    if (a == "--batch") batch = std::stoll(v);
    else if (a == "--seq") seq = std::stoll(v);
    else if (a == "--steps") steps = std::stoll(v);
    else if (a == "--warmup") warmup = std::stoll(v);
    else if (a == "--set") overrides.push_back(v);
    else { std::fprintf(stderr, "unknown flag %s\n", a.c_str()); return 2; }
  }
  try {
    auto cfg = um::train::load_config(config, overrides);
    if (batch) cfg.train.micro_batch = cfg.train.global_batch = batch;
    if (seq) cfg.data.seq_len = seq;
    cfg.train.global_batch = cfg.train.micro_batch;
    cfg.train.max_steps = warmup + steps;
    cfg.train.log_every = 1 << 30;
    cfg.data.val = "";
    // Random tokens: throughput does not depend on the text.
    fs::path dir = fs::temp_directory_path() / "ultramem-bench-train";
    fs::create_directories(dir);
    cfg.train.out_dir = (dir / "run").string();
    std::mt19937 rng(1);
    const uint32_t vocab = uint32_t(cfg.model.real_vocab());
    std::vector<uint32_t> toks(size_t((warmup + steps + 2) * cfg.train.micro_batch * (cfg.data.seq_len + 1)));
    for (auto& t : toks) t = rng() % vocab;
    um::data::write_shard((dir / "tokens.bin").string(), toks, vocab, vocab - 1, 1);
    cfg.data.train = (dir / "tokens.bin").string();

    um::train::Trainer trainer(cfg, false, true);
    std::vector<double> tps, mfu;
    for (int64_t s = 0; s < warmup + steps; ++s) {
      auto st = trainer.step();
      if (s >= warmup) {
        tps.push_back(st.tokens_per_s);
        mfu.push_back(st.mfu);
      }
    }
    std::sort(tps.begin(), tps.end());
    std::sort(mfu.begin(), mfu.end());
    size_t free_b = 0, total_b = 0;
    if (trainer.device().is_cuda()) um::cuda_mem_info(&free_b, &total_b);
    const double used_gib = double(total_b - free_b) / double(1ull << 30);
    const double med = tps[tps.size() / 2];
    std::printf("{\"impl\": \"ultramem\", \"tokens_per_s\": %.0f, \"step_ms\": %.2f, \"mfu\": %.4f, "
                "\"arena_peak_gib\": %.3f, \"device_used_gib\": %.3f, \"params_m\": %.2f}\n",
                med, 1e3 * double(cfg.train.micro_batch * cfg.data.seq_len) / med, mfu[mfu.size() / 2],
                double(trainer.arena_peak_bytes()) / double(1ull << 30), used_gib,
                double(trainer.params().numel()) / 1e6);
    std::printf("\n| config | batch x seq | device | tokens/s | MFU | arena peak GiB | device used GiB |\n");
    std::printf("|---|---|---|---|---|---|---|\n");
    std::printf("| %s | %lldx%lld | %s | %.0f | %.1f%% | %.2f | %.2f |\n", config.c_str(),
                static_cast<long long>(cfg.train.micro_batch), static_cast<long long>(cfg.data.seq_len),
                trainer.device().is_cuda() ? um::cuda_device_name().c_str() : "cpu", med, 100 * mfu[mfu.size() / 2],
                double(trainer.arena_peak_bytes()) / double(1ull << 30), used_gib);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench-train: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
