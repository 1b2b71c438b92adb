// Helpers of the MoE tests (test_moe.cpp, test_moe_plan.cpp, test_swiglu_expert_mlp.cpp): expert ids as
// a tensor, row groups from a list of sizes, and the check that a Hopper device really runs the sm90 kernel.
#pragma once
#include <string>
#include <vector>

#include "testing.h"
#include "ultramem/ops/grouped_linear.h"

namespace um::testing {

// ids (N x k, token-major) as the i32 experts tensor a plan takes.
inline Tensor experts_tensor(const std::vector<int64_t>& ids, int64_t N, int64_t k, Device dev = Device::cpu()) {
  return Tensor::from_ints(ids, Shape{N, k}, DType::i32, dev);
}

// Consecutive groups from sizes (a negative size is a gap of that many rows in no group); `rows` gets
// the total.
inline ops::RowGroups groups_of(const std::vector<int64_t>& sizes, int64_t& rows) {
  ops::RowGroups g;
  rows = 0;
  for (int64_t sz : sizes) {
    if (sz < 0) {
      rows -= sz;
      continue;
    }
    g.start.push_back(rows), g.size.push_back(sz);
    rows += sz;
  }
  return g;
}

// The pattern `times` over (more than 16 non-empty groups: the kernel's group table at scale).
inline std::vector<int64_t> repeat(const std::vector<int64_t>& pattern, int times) {
  std::vector<int64_t> out;
  for (int i = 0; i < times; ++i) out.insert(out.end(), pattern.begin(), pattern.end());
  return out;
}

// The rows of no group, ascending.
inline std::vector<int64_t> rows_outside(const ops::RowGroups& g, int64_t rows) {
  std::vector<int64_t> out;
  for (int64_t r = 0, gi = 0; r < rows; ++r) {
    while (gi < g.count() && g.start[size_t(gi)] + g.size[size_t(gi)] <= r) ++gi;
    if (gi < g.count() && r >= g.start[size_t(gi)]) continue;
    out.push_back(r);
  }
  return out;
}

// On a Hopper device the bf16 path must be the sm90 kernel (a silent cuBLAS fallback would leave the
// kernel untested); elsewhere the caller's case checks the cuBLAS path with the same shapes.
inline void require_sm90_on_hopper() {
#if ULTRAMEM_CUDA
  const std::string name = cuda_device_name();
  if (name.find("H100") != std::string::npos || name.find("H200") != std::string::npos)
    REQUIRE(cuda::grouped_gemm_sm90_available());
#endif
}

// True where the MoE ops must take the sm90 kernels (a device running the sm_90a code, grouped GEMM mode
// "auto"): the tests then call the fused kernels' entry points and require them to run.
inline bool expects_sm90_kernel(Device dev) {
#if ULTRAMEM_CUDA
  return dev.is_cuda() && cuda::grouped_gemm_sm90_available() && cuda::grouped_gemm_mode() == "auto";
#else
  (void)dev;
  return false;
#endif
}

}  // namespace um::testing
