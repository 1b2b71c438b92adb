#include "ultramem/ops/memory_usage.h"

namespace um::cpu {

void mark_memory_rows(const Tensor& indices, const Tensor& perm, const ops::LookupArgs& a, const Tensor& used) {
  const int32_t* idx = indices.data_as<int32_t>();
  const int32_t* p = perm.defined() ? perm.data_as<int32_t>() : nullptr;
  int32_t* u = used.data_as<int32_t>();
  const int64_t n = indices.numel(), rows = used.numel(), virt = a.virtual_count();
  for (int64_t i = 0; i < n; ++i) {
    int64_t x = idx[i];
    if (x < 0 || x >= virt) continue;
    if (p) x = p[x];
    if (x < 0 || x >= virt) continue;
    u[(x % a.value_num + a.offset) % rows] = 1;
  }
}

}  // namespace um::cpu
