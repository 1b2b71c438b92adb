// ultramem-train CONFIG.json [--set key.path=value ...] [--resume]
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "ultramem/train/reliability.h"
#include "ultramem/train/trainer.h"

static void usage() {
  std::puts(
      "usage: ultramem-train CONFIG.json [--set key.path=value ...] [--resume]\n"
      "  --set      override a config key, e.g. --set train.max_steps=100 --set optim.lr=3e-4\n"
      "  --resume   continue from the latest checkpoint in train.out_dir\n"
      "SIGINT/SIGTERM finish the current step, save a checkpoint and exit with 128 + the signal number\n"
      "(a second signal exits at once). Exit codes: 0 done, 1 error, 2 usage, 3 stopped on a non-finite\n"
      "loss or gradient (checkpoint saved), 130 SIGINT, 143 SIGTERM. Keys, defaults and ranges: docs/config.md,\n"
      "guarantees: docs/reliability.md");
}

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // whole lines reach a log file even when the process is killed
  std::string config;
  std::vector<std::string> overrides;
  bool resume = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      usage();
      return 0;
    } else if (a == "--resume") {
      resume = true;
    } else if (a == "--set" && i + 1 < argc) {
      overrides.push_back(argv[++i]);
    } else if (a.rfind("--set=", 0) == 0) {
      overrides.push_back(a.substr(6));
    } else if (!a.empty() && a[0] != '-' && config.empty()) {
      config = a;
    } else {
      std::fprintf(stderr, "ultramem-train: unexpected argument \"%s\"\n", a.c_str());
      usage();
      return 2;
    }
  }
  if (config.empty()) {
    usage();
    return 2;
  }
  try {
    um::train::TrainConfig cfg = um::train::load_config(config, overrides);
    um::train::install_stop_signal_handlers();
    um::train::Trainer trainer(cfg, resume);
    trainer.run();
    if (int sig = trainer.stopped_by_signal()) return 128 + sig;
  } catch (const um::train::NonFiniteStop& e) {
    std::fprintf(stderr, "ultramem-train: stopped: %s\n", e.what());
    return 3;
  } catch (const um::Error& e) {
    std::fprintf(stderr, "ultramem-train: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ultramem-train: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
