// CPU reference of MoE dispatch: a stable counting sort by expert, row gathers and the weighted combine.
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
void combine_forward_impl(const Tensor& ys, const Tensor& weights, const ops::MoePlan& plan, const Tensor& y) {
  const int64_t d = ys.dim(1), k = plan.top_k;
  const int32_t* row_of = plan.row_of.data_as<int32_t>();
  const T* py = ys.data_as<T>();
  const T* w = weights.data_as<T>();
  T* out = y.data_as<T>();
  for (int64_t t = 0; t < plan.tokens; ++t) {
    T* o = out + t * d;
    std::fill(o, o + d, T(0));
    for (int64_t j = 0; j < k; ++j) {
      const int32_t r = row_of[t * k + j];
      if (r < 0) continue;
      const T wj = w[t * k + j];
      for (int64_t c = 0; c < d; ++c) o[c] += wj * py[int64_t(r) * d + c];
    }
  }
}

template <typename T>
void combine_backward_impl(const Tensor& ys, const Tensor& weights, const Tensor& dy, const ops::MoePlan& plan,
                           const GradSlot& dys, const GradSlot& dweights) {
  const int64_t d = ys.dim(1), k = plan.top_k;
  const int32_t* row_of = plan.row_of.data_as<int32_t>();
  const T* py = ys.data_as<T>();
  const T* w = weights.data_as<T>();
  const T* g = dy.data_as<T>();
  if (dys && !dys.accumulate && plan.dropped() > 0) dys.grad.zero_();
  for (int64_t t = 0; t < plan.tokens; ++t) {
    const T* gt = g + t * d;
    for (int64_t j = 0; j < k; ++j) {
      const int32_t r = row_of[t * k + j];
      if (dweights) {
        T s = 0;
        if (r >= 0)
          for (int64_t c = 0; c < d; ++c) s += gt[c] * py[int64_t(r) * d + c];
        T& dw = dweights.grad.data_as<T>()[t * k + j];
        dw = dweights.accumulate ? dw + s : s;
      }
      if (dys && r >= 0) {
        T* o = dys.grad.data_as<T>() + int64_t(r) * d;
        const T wj = w[t * k + j];
        for (int64_t c = 0; c < d; ++c) o[c] = (dys.accumulate ? o[c] : T(0)) + wj * gt[c];
      }
    }
  }
}

}  // namespace

void moe_permute_forward(const Tensor& x, const ops::MoePlan& plan, const Tensor& xs) {
  UM_DISPATCH_CPU(x.dtype(), T, permute_forward_impl<T>(x, plan, xs));
}
void moe_permute_backward(const Tensor& dxs, const ops::MoePlan& plan, const GradSlot& dx) {
  UM_DISPATCH_CPU(dxs.dtype(), T, permute_backward_impl<T>(dxs, plan, dx));
}
void moe_combine_forward(const Tensor& ys, const Tensor& weights, const ops::MoePlan& plan, const Tensor& y) {
  UM_DISPATCH_CPU(ys.dtype(), T, combine_forward_impl<T>(ys, weights, plan, y));
}
void moe_combine_backward(const Tensor& ys, const Tensor& weights, const Tensor& dy, const ops::MoePlan& plan,
                          const GradSlot& dys, const GradSlot& dweights) {
  UM_DISPATCH_CPU(ys.dtype(), T, combine_backward_impl<T>(ys, weights, dy, plan, dys, dweights));
}

}  // namespace um::cpu
