// CPU AdamW and gradient norms. The update runs the same float operations in the same order as
// cuda/adamw.cu (which spells them with round-to-nearest intrinsics so nvcc fuses nothing), so both
// backends agree to the last bit where the host compiler does not contract a*b+c into an FMA
// (x86-64 without -march flags never does).
#include "ultramem/optim/adamw.h"

#include <algorithm>
#include <cmath>

namespace um::cpu {

static inline void adamw_update(float& p, float& m, float& v, float grad, const optim::AdamWGroupCoefficients& gc,
                                const optim::AdamWStepCoefficients& c) {
  float g = grad * c.grad_scale;
  float decayed = p * gc.decay;
  m = c.beta1 * m + c.one_minus_beta1 * g;
  v = c.beta2 * v + c.one_minus_beta2 * (g * g);
  float denom = std::sqrt(v) / c.bias_correction2_sqrt + c.eps;
  p = decayed - gc.step_size * (m / denom);
}

void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, const Tensor& param_copy,
                const std::vector<optim::AdamWGroupCoefficients>& groups, const optim::AdamWStepCoefficients& c) {
  float* p = param.data_as<float>();
  const float* g = grad.data_as<float>();
  float* mm = m.data_as<float>();
  float* vv = v.data_as<float>();
  uint16_t* copy = param_copy.defined() ? param_copy.data_as<uint16_t>() : nullptr;
  for (const auto& gc : groups) {
#pragma omp parallel for if (gc.end - gc.begin > (1 << 16))
    for (int64_t i = gc.begin; i < gc.end; ++i) {
      adamw_update(p[i], mm[i], vv[i], g[i], gc, c);
      if (copy) copy[i] = float_to_bf16_bits(p[i]);
    }
  }
}

// Fixed-size chunks summed in parallel, then the chunk sums in chunk order: the result does not
// depend on the thread count.
static double sum_of_squares(const float* x, int64_t n) {
  constexpr int64_t kChunk = int64_t(1) << 16;
  int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(size_t(chunks), 0.0);
#pragma omp parallel for if (chunks > 1)
  for (int64_t k = 0; k < chunks; ++k) {
    double s = 0;
    for (int64_t i = k * kChunk, e = std::min(n, (k + 1) * kChunk); i < e; ++i) s += double(x[i]) * double(x[i]);
    partial[size_t(k)] = s;
  }
  double total = 0;
  for (double s : partial) total += s;
  return total;
}

std::vector<double> grad_sq_norms(const Tensor& grad, const std::vector<std::pair<int64_t, int64_t>>& ranges) {
  std::vector<double> out;
  out.reserve(ranges.size());
  for (const auto& r : ranges) out.push_back(sum_of_squares(grad.data_as<float>() + r.first, r.second - r.first));
  return out;
}

}  // namespace um::cpu
