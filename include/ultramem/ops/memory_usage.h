// Memory usage marks: which value rows a memory layer read this step, for the "fraction of value
// rows used" health statistic. The mapping from a pick to its row is memory_lookup's (same args).
#pragma once
#include "ultramem/core/tensor.h"
#include "ultramem/ops/memory_lookup.h"

namespace um::ops {

// used[row(indices[t, s])] = 1 for every pick (used: i32 [N], the pool's rows; perm may be undefined).
// Idempotent writes of one value: no ordering question, deterministic. Indices are memory_lookup's,
// which has validated them; out-of-range picks are skipped here.
void mark_memory_rows(const Tensor& indices, const Tensor& perm, const LookupArgs& args, const Tensor& used);
// Number of nonzero entries of an i32 tensor.
int64_t count_nonzero(const Tensor& used);

}  // namespace um::ops

namespace um::cpu {
void mark_memory_rows(const Tensor& indices, const Tensor& perm, const ops::LookupArgs& args, const Tensor& used);
}  // namespace um::cpu

namespace um::cuda {
void mark_memory_rows(const Tensor& indices, const Tensor& perm, const ops::LookupArgs& args, const Tensor& used);
}  // namespace um::cuda
