// Learning-rate schedule: linear warmup from 0, then cosine (or linear) decay to lr_end_ratio x peak
// at max_steps, or constant.
#pragma once
#include <cstdint>
#include <string>

namespace um::optim {

struct Schedule {
  double peak_lr = 0;
  int64_t warmup_steps = 0;
  int64_t max_steps = 1;
  double end_ratio = 0.1;
  std::string kind = "cosine";
  // Learning rate of optimizer step `step` (0-based).
  double lr(int64_t step) const;
};

}  // namespace um::optim
