// What every benchmark shares: the median of repeated timings, and a checked CUDA runtime call for
// the events and copies a benchmark makes itself.
#pragma once
#include <algorithm>
#include <vector>

#include "ultramem/core/check.h"
#if ULTRAMEM_CUDA
#include <cuda_runtime.h>
#define BENCH_CUDA(call)                                                                         \
  do {                                                                                           \
    cudaError_t e_ = (call);                                                                     \
    if (e_ != cudaSuccess) throw ::um::Error(UM_HERE, #call " to succeed", cudaGetErrorString(e_)); \
  } while (0)
#endif

namespace um::bench {

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace um::bench
