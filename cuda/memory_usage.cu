// CUDA usage marks: one thread per pick writes 1 into its row's slot (idempotent, no atomics needed).
#include "ultramem/ops/memory_usage.h"

#include "common.cuh"

namespace um::cuda {
namespace {

__global__ void mark_rows_kernel(const int32_t* __restrict__ idx, const int32_t* __restrict__ perm, int64_t n,
                                 int64_t virt, int64_t value_num, int64_t offset, int64_t rows,
                                 int32_t* __restrict__ used) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t x = idx[i];
    if (x < 0 || x >= virt) continue;
    if (perm) x = perm[x];
    if (x < 0 || x >= virt) continue;
    used[(x % value_num + offset) % rows] = 1;
  }
}

}  // namespace

void mark_memory_rows(const Tensor& indices, const Tensor& perm, const ops::LookupArgs& a, const Tensor& used) {
  const int64_t n = indices.numel();
  if (n == 0) return;
  const unsigned blocks = unsigned(std::min<int64_t>(ceil_div(n, 256), 4096));
  mark_rows_kernel<<<blocks, 256, 0, stream()>>>(indices.data_as<int32_t>(),
                                                 perm.defined() ? perm.data_as<int32_t>() : nullptr, n,
                                                 a.virtual_count(), a.value_num, a.offset, used.numel(),
                                                 used.data_as<int32_t>());
  UM_CUDA_LAUNCHED();
}

}  // namespace um::cuda
