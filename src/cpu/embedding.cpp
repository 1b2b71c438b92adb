// CPU reference of the embedding family: a row gather and a scatter-add in position order.
#include "ultramem/ops/embedding.h"

#include <cstring>

#include "src/cpu/dispatch.h"

namespace um::cpu {

// Throws before any memory is touched when an id lies outside [0, vocab).
static void check_id_range(const int32_t* ids, int64_t n, int64_t vocab, const char* op) {
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] < 0 || ids[i] >= vocab)
      throw Error(detail::concat(op, ": ids position ", i), detail::concat("a token id in [0, ", vocab, ")"),
                  std::to_string(ids[i]));
}

template <typename T>
static void gather_rows(const int32_t* ids, const T* table, T* out, int64_t n, int64_t C) {
#pragma omp parallel for if (n * C > (1 << 16))
  for (int64_t i = 0; i < n; ++i) std::memcpy(out + i * C, table + int64_t(ids[i]) * C, size_t(C) * sizeof(T));
}

template <typename T>
static void scatter_add_rows(const int32_t* ids, const T* dout, T* dtable, int64_t n, int64_t vocab, int64_t C,
                             bool accumulate) {
  if (!accumulate) std::memset(dtable, 0, size_t(vocab * C) * sizeof(T));
  for (int64_t i = 0; i < n; ++i) {
    T* row = dtable + int64_t(ids[i]) * C;
    const T* g = dout + i * C;
    for (int64_t c = 0; c < C; ++c) row[c] += g[c];
  }
}

void embedding_forward(const Tensor& ids, const Tensor& table, const Tensor& out) {
  int64_t n = ids.numel(), C = table.dim(1);
  check_id_range(ids.data_as<int32_t>(), n, table.dim(0), "embedding");
  UM_DISPATCH_CPU(table.dtype(), T,
                  gather_rows<T>(ids.data_as<int32_t>(), table.data_as<T>(), out.data_as<T>(), n, C));
}

void embedding_backward(const Tensor& ids, const Tensor& dout, const Tensor& dtable, bool accumulate) {
  int64_t n = ids.numel(), vocab = dtable.dim(0), C = dtable.dim(1);
  check_id_range(ids.data_as<int32_t>(), n, vocab, "embedding backward");
  UM_DISPATCH_CPU(dtable.dtype(), T,
                  scatter_add_rows<T>(ids.data_as<int32_t>(), dout.data_as<T>(), dtable.data_as<T>(), n, vocab, C,
                                      accumulate));
}

}  // namespace um::cpu
