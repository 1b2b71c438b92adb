#include "ultramem/optim/adamw.h"

#include <algorithm>
#include <cmath>

#include "ultramem/ops/elementwise.h"
#include "src/ops/dispatch.h"

namespace um::optim {

static void check_flat_f32(const Tensor& t, const Tensor& like, const char* what) {
  if (!t.defined()) throw Error(what, "a tensor", "an undefined tensor");
  check_dtype(t, DType::f32, what);
  if (like.defined()) {
    check_shape(t, like.shape(), what);
    check_same_device(t, like, what);
  }
}

static void check_range(int64_t begin, int64_t end, int64_t numel, const char* what) {
  if (begin < 0 || begin > end || end > numel)
    throw Error(what, detail::concat("a range [begin, end) within [0, ", numel, ")"),
                detail::concat("[", begin, ", ", end, ")"));
}

void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, const Tensor& param_copy,
                const std::vector<AdamWGroup>& groups, const AdamWHyper& h) {
  check_flat_f32(param, Tensor(), "adamw_step: param");
  check_flat_f32(grad, param, "adamw_step: grad");
  check_flat_f32(m, param, "adamw_step: m");
  check_flat_f32(v, param, "adamw_step: v");
  if (param_copy.defined()) {
    check_dtype(param_copy, DType::bf16, "adamw_step: param_copy");
    check_shape(param_copy, param.shape(), "adamw_step: param_copy");
    check_same_device(param_copy, param, "adamw_step: param_copy");
  }
  if (h.step < 1) throw Error("adamw_step: step", "a 1-based step >= 1", std::to_string(h.step));

  std::vector<AdamWGroupCoefficients> coeffs;
  coeffs.reserve(groups.size());
  for (const AdamWGroup& g : groups) {
    check_range(g.begin, g.end, param.numel(), "adamw_step: group");
    double lr = g.lr;
    coeffs.push_back({g.begin, g.end, float(lr / (1.0 - std::pow(double(h.beta1), double(h.step)))),
                      float(1.0 - lr * double(g.weight_decay))});
  }
  // An element in two groups would be updated twice.
  std::vector<AdamWGroupCoefficients> sorted = coeffs;
  std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < sorted.size(); ++i)
    if (sorted[i].begin < sorted[i - 1].end)
      throw Error("adamw_step: groups", "non-overlapping element ranges",
                  detail::concat("[", sorted[i - 1].begin, ", ", sorted[i - 1].end, ") and [", sorted[i].begin, ", ",
                                 sorted[i].end, ")"));

  AdamWStepCoefficients c;
  c.beta1 = h.beta1;
  c.one_minus_beta1 = float(1.0 - double(h.beta1));
  c.beta2 = h.beta2;
  c.one_minus_beta2 = float(1.0 - double(h.beta2));
  c.eps = h.eps;
  c.bias_correction2_sqrt = float(std::sqrt(1.0 - std::pow(double(h.beta2), double(h.step))));
  c.grad_scale = h.grad_scale;
  UM_DISPATCH_DEVICE(param, adamw_step, param, grad, m, v, param_copy, coeffs, c);
}

std::vector<double> grad_sq_norms(const Tensor& grad, const std::vector<std::pair<int64_t, int64_t>>& ranges) {
  check_flat_f32(grad, Tensor(), "grad_sq_norms: grad");
  for (const auto& r : ranges) check_range(r.first, r.second, grad.numel(), "grad_sq_norms: range");
  return UM_DISPATCH_DEVICE(grad, grad_sq_norms, grad, ranges);
}

double grad_norm(const Tensor& grad) {
  check_flat_f32(grad, Tensor(), "grad_norm: grad");
  return std::sqrt(grad_sq_norms(grad, {{0, grad.numel()}})[0]);
}

void copy_to_bf16(const Tensor& src_f32, const Tensor& dst_bf16) {
  check_flat_f32(src_f32, Tensor(), "copy_to_bf16: src");
  if (!dst_bf16.defined()) throw Error("copy_to_bf16: dst", "a bf16 tensor", "an undefined tensor");
  check_dtype(dst_bf16, DType::bf16, "copy_to_bf16: dst");
  check_shape(dst_bf16, src_f32.shape(), "copy_to_bf16: dst");
  check_same_device(dst_bf16, src_f32, "copy_to_bf16: dst");
  ops::cast_forward(src_f32, dst_bf16);  // rounds to nearest even on both backends
}

}  // namespace um::optim
