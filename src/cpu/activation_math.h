// Host math of the activation family in double, shared by the CPU kernels that fuse an activation:
// GPT-2's tanh GELU and the sigmoid of SiLU (formulas in include/ultramem/ops/activation.h).
#pragma once
#include <cmath>

namespace um::cpu {

inline constexpr double kGeluScale = 0.7978845608028654;  // sqrt(2 / pi)
inline constexpr double kGeluCubic = 0.044715;

inline double gelu_value(double x) { return 0.5 * x * (1.0 + std::tanh(kGeluScale * (x + kGeluCubic * x * x * x))); }

inline double gelu_derivative(double x) {
  double t = std::tanh(kGeluScale * (x + kGeluCubic * x * x * x));
  return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * kGeluScale * (1.0 + 3.0 * kGeluCubic * x * x);
}

inline double sigmoid(double g) { return 1.0 / (1.0 + std::exp(-g)); }

}  // namespace um::cpu
