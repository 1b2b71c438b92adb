// CPU reference RoPE: angles and their sines and cosines in double, whatever the data type.
#include <cmath>
#include <vector>

#include "ultramem/ops/rope.h"
#include "src/cpu/dispatch.h"

namespace um::cpu {

namespace {

template <typename T>
void rope_kernel(const ops::RopeShape& s, const T* src, T* dst, int direction, bool accumulate) {
  const int64_t D = s.head_dim, half = D / 2, row = s.row(), rotated = s.rotated_heads() * D;
  std::vector<double> inv_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) inv_freq[i] = std::pow(double(s.theta), -2.0 * double(i) / double(D));
  const int64_t tokens = s.batch * s.seq;
#pragma omp parallel for schedule(static) if (tokens * row > (1 << 16))
  for (int64_t n = 0; n < tokens; ++n) {
    const int64_t t = n % s.seq;
    const T* x = src + n * row;
    T* y = dst + n * row;
    for (int64_t head = 0; head < s.rotated_heads(); ++head) {
      const T* xh = x + head * D;
      T* yh = y + head * D;
      for (int64_t i = 0; i < half; ++i) {
        const double angle = double(t) * inv_freq[i];
        const double c = std::cos(angle), sn = direction * std::sin(angle);
        const double x1 = xh[i], x2 = xh[i + half];
        const double y1 = x1 * c - x2 * sn, y2 = x2 * c + x1 * sn;
        yh[i] = T((accumulate ? double(yh[i]) : 0.0) + y1);
        yh[i + half] = T((accumulate ? double(yh[i + half]) : 0.0) + y2);
      }
    }
    for (int64_t c = rotated; c < row; ++c) y[c] = (accumulate ? y[c] : T(0)) + x[c];
  }
}

}  // namespace

void rope(const ops::RopeShape& s, const Tensor& src, const Tensor& dst, int direction, bool accumulate) {
  UM_DISPATCH_CPU(src.dtype(), T, rope_kernel<T>(s, src.data_as<T>(), dst.data_as<T>(), direction, accumulate));
}

}  // namespace um::cpu
