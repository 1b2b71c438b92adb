// CPU reference of MoE dispatch: a stable counting sort by expert, row gathers (the combine is the permute's
// backward, ops/moe_dispatch.cpp) and the routing weights in row order.
#include <algorithm>
#include <cstring>

#include "src/cpu/dispatch.h"
#include "ultramem/ops/moe_dispatch.h"

namespace um::cpu {

void moe_plan_build_finish(ops::MoePlan&) {}  // build filled counts and groups already

void moe_plan_build(const Tensor& experts, ops::MoePlan& plan) {
  const int64_t A = plan.rows(), E = plan.num_experts, C = plan.capacity;
  const int32_t* ex = experts.data_as<int32_t>();
  for (int64_t a = 0; a < A; ++a)
    if (ex[a] < 0 || ex[a] >= E)
      throw Error(detail::concat("moe_plan: experts position ", a), detail::concat("an expert id in [0, ", E, ")"),
                  std::to_string(ex[a]));
  plan.counts.assign(size_t(E), 0);
  for (int64_t a = 0; a < A; ++a) ++plan.counts[size_t(ex[a])];
  plan.groups.start.assign(size_t(E), 0);
  plan.groups.size.assign(size_t(E), 0);
  std::vector<int64_t> next(size_t(E), 0);
  int64_t offset = 0;
  for (int64_t e = 0; e < E; ++e) {
    plan.groups.start[size_t(e)] = offset;
    plan.groups.size[size_t(e)] = C > 0 ? std::min(plan.counts[size_t(e)], C) : plan.counts[size_t(e)];
    next[size_t(e)] = offset;
    offset += plan.counts[size_t(e)];
  }
  int32_t* sorted = plan.sorted_assignment.data_as<int32_t>();
  int32_t* row_of = plan.row_of.data_as<int32_t>();
  for (int64_t a = 0; a < A; ++a) {
    const int64_t e = ex[a], r = next[size_t(e)]++;
    sorted[r] = int32_t(a);
    row_of[a] = r - plan.groups.start[size_t(e)] < plan.groups.size[size_t(e)] ? int32_t(r) : -1;
  }
}

namespace {

template <typename T>
void permute_forward_impl(const Tensor& x, const ops::MoePlan& plan, const Tensor& xs) {
  const int64_t d = x.dim(1), k = plan.top_k;
  const int32_t* sorted = plan.sorted_assignment.data_as<int32_t>();
  const T* px = x.data_as<T>();
  T* out = xs.data_as<T>();
  const int32_t* row_of = plan.row_of.data_as<int32_t>();
  for (int64_t r = 0; r < plan.rows(); ++r) {
    if (row_of[sorted[r]] < 0)  // dropped by the capacity: a zero row (its gradient is not taken)
      std::fill(out + r * d, out + (r + 1) * d, T(0));
    else
      std::memcpy(out + r * d, px + int64_t(sorted[r] / k) * d, size_t(d) * sizeof(T));
  }
}

template <typename T>
void permute_backward_impl(const Tensor& dxs, const ops::MoePlan& plan, const GradSlot& dx) {
  const int64_t d = dxs.dim(1), k = plan.top_k;
  const int32_t* row_of = plan.row_of.data_as<int32_t>();
  const T* g = dxs.data_as<T>();
  T* out = dx.grad.data_as<T>();
  for (int64_t t = 0; t < plan.tokens; ++t) {
    T* o = out + t * d;
    if (!dx.accumulate) std::fill(o, o + d, T(0));
    for (int64_t j = 0; j < k; ++j) {
      const int32_t r = row_of[t * k + j];
      if (r < 0) continue;
      for (int64_t c = 0; c < d; ++c) o[c] += g[int64_t(r) * d + c];
    }
  }
}

template <typename T>
void row_weights_forward_impl(const Tensor& weights, const ops::MoePlan& plan, const Tensor& w) {
  const int32_t* sorted = plan.sorted_assignment.data_as<int32_t>();
  const int32_t* row_of = plan.row_of.data_as<int32_t>();
  const T* in = weights.data_as<T>();
  T* out = w.data_as<T>();
  for (int64_t r = 0; r < plan.rows(); ++r) out[r] = row_of[sorted[r]] < 0 ? T(0) : in[sorted[r]];
}

template <typename T>
void row_weights_backward_impl(const Tensor& dw, const ops::MoePlan& plan, const GradSlot& dweights) {
  const int32_t* row_of = plan.row_of.data_as<int32_t>();
  const T* g = dw.data_as<T>();
  T* out = dweights.grad.data_as<T>();
  for (int64_t a = 0; a < plan.rows(); ++a) {
    const T v = row_of[a] < 0 ? T(0) : g[row_of[a]];
    out[a] = dweights.accumulate ? out[a] + v : v;
  }
}

}  // namespace

void moe_permute_forward(const Tensor& x, const ops::MoePlan& plan, const Tensor& xs) {
  UM_DISPATCH_CPU(x.dtype(), T, permute_forward_impl<T>(x, plan, xs));
}
void moe_permute_backward(const Tensor& dxs, const ops::MoePlan& plan, const GradSlot& dx) {
  UM_DISPATCH_CPU(dxs.dtype(), T, permute_backward_impl<T>(dxs, plan, dx));
}
void moe_row_weights_forward(const Tensor& weights, const ops::MoePlan& plan, const Tensor& w) {
  UM_DISPATCH_CPU(weights.dtype(), T, row_weights_forward_impl<T>(weights, plan, w));
}
void moe_row_weights_backward(const Tensor& dw, const ops::MoePlan& plan, const GradSlot& dweights) {
  UM_DISPATCH_CPU(dw.dtype(), T, row_weights_backward_impl<T>(dw, plan, dweights));
}

}  // namespace um::cpu
