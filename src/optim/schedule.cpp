#include "ultramem/optim/schedule.h"

#include <algorithm>
#include <cmath>

namespace um::optim {

double Schedule::lr(int64_t step) const {
  if (step < warmup_steps) return peak_lr * double(step + 1) / double(warmup_steps);
  if (kind == "constant") return peak_lr;
  const double span = double(std::max<int64_t>(max_steps - warmup_steps, 1));
  const double progress = std::clamp(double(step - warmup_steps) / span, 0.0, 1.0);
  const double end = peak_lr * end_ratio;
  if (kind == "linear") return peak_lr + (end - peak_lr) * progress;
  return end + 0.5 * (peak_lr - end) * (1.0 + std::cos(M_PI * progress));
}

}  // namespace um::optim
