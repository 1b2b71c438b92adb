#include "ultramem/ops/memory_usage.h"

#include "src/ops/dispatch.h"

namespace um::ops {

void mark_memory_rows(const Tensor& indices, const Tensor& perm, const LookupArgs& args, const Tensor& used) {
  UM_CHECK(indices.defined() && indices.ndim() == 2, "memory usage: indices [T, M]", indices.desc());
  check_dtype(indices, DType::i32, "memory usage: indices");
  check_dtype(used, DType::i32, "memory usage: used");
  check_same_device(indices, used, "memory usage: indices and used");
  if (perm.defined()) {
    check_dtype(perm, DType::i32, "memory usage: perm");
    check_shape(perm, {args.virtual_count()}, "memory usage: perm");
  }
  UM_DISPATCH_DEVICE(used, mark_memory_rows, indices, perm, args, used);
}

int64_t count_nonzero(const Tensor& used) {
  int64_t n = 0;
  for (int64_t v : used.to_ints()) n += v != 0;
  return n;
}

}  // namespace um::ops
