// CPU reference of dropout: the same integer mask as the GPU (ops::dropout_keep), scale in T.
#include "ultramem/ops/dropout.h"

#include "src/cpu/dispatch.h"

namespace um::cpu {

template <typename T>
static void dropout_kernel(const T* src, T* dst, int64_t n, uint64_t seed, uint64_t offset, uint64_t threshold,
                           T scale, bool accumulate) {
#pragma omp parallel for if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) {
    T v = ops::dropout_keep(seed, offset + uint64_t(i), threshold) ? src[i] * scale : T(0);
    dst[i] = accumulate ? dst[i] + v : v;
  }
}

void dropout_apply(const Tensor& src, float p, uint64_t seed, uint64_t offset, const Tensor& dst, bool accumulate) {
  uint64_t threshold = ops::dropout_threshold(p);
  UM_DISPATCH_CPU(src.dtype(), T,
                  dropout_kernel<T>(src.data_as<T>(), dst.data_as<T>(), src.numel(), seed, offset, threshold,
                                    T(1) / (T(1) - T(p)), accumulate));
}

}  // namespace um::cpu
