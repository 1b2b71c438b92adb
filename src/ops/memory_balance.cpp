#include "ultramem/ops/memory_balance.h"

#include "ultramem/core/arena.h"
#include "src/ops/dispatch.h"

namespace um::ops {

static void check_inputs(const Tensor& scores, const Tensor& u, const Tensor& v, const Tensor& rows) {
  if (!scores.defined() || scores.ndim() != 5 || scores.dim(2) != 2)
    throw Error("memory_key_balance: scores", "shape [T, H, 2, r, n]", scores.defined() ? scores.desc() : "undefined");
  const bool cuda = scores.device().is_cuda();
  if (scores.dtype() != DType::f32 && !(scores.dtype() == DType::f64 && !cuda))
    throw Error("memory_key_balance: scores", cuda ? "dtype f32" : "dtype f32 or f64", scores.desc());
  const int64_t T = scores.dim(0), H = scores.dim(1), r = scores.dim(3);
  if (u.defined() != v.defined()) throw Error("memory_key_balance: u, v", "both or neither", "one of them");
  if (u.defined()) {
    check_shape(u, {H, r}, "memory_key_balance: u");
    check_shape(v, {H, r}, "memory_key_balance: v");
    check_dtype(u, DType::f32, "memory_key_balance: u");
    check_dtype(v, DType::f32, "memory_key_balance: v");
    check_same_device(u, scores, "memory_key_balance: u and scores");
  } else if (r != 1) {
    throw Error("memory_key_balance: scores", "rank 1 without u, v", scores.desc());
  }
  if (!rows.defined() || rows.ndim() != 4 || rows.dim(0) != T || rows.dim(1) != H || rows.dim(2) != 2)
    throw Error("memory_key_balance: rows", detail::concat("shape [", T, ", ", H, ", 2, knn]"),
                rows.defined() ? rows.desc() : "undefined");
  check_dtype(rows, DType::i32, "memory_key_balance: rows");
  check_same_device(rows, scores, "memory_key_balance: rows and scores");
}

void memory_key_balance_forward(const Tensor& scores, const Tensor& u, const Tensor& v, const Tensor& rows,
                                const Tensor& y, const Tensor& f, const Tensor& p) {
  check_inputs(scores, u, v, rows);
  const int64_t TH = scores.dim(0) * scores.dim(1), n = scores.dim(4);
  check_shape(y, {2, TH, n}, "memory_key_balance: y");
  check_shape(f, {2, n}, "memory_key_balance: f");
  check_shape(p, {2, n}, "memory_key_balance: p");
  UM_DISPATCH_DEVICE(scores, memory_key_balance_forward, scores, u, v, rows, y, f, p);
}

void memory_key_balance_backward(const Tensor& u, const Tensor& v, const Tensor& y, const Tensor& f, double scale,
                                 const Tensor& dscores, bool accumulate) {
  UM_CHECK(dscores.ndim() == 5 && y.ndim() == 3 && y.dim(1) == dscores.dim(0) * dscores.dim(1) &&
               y.dim(2) == dscores.dim(4),
           "memory_key_balance backward: y [2, T*H, n] matching dscores [T, H, 2, r, n]", y.desc(), " and ",
           dscores.desc());
  UM_DISPATCH_DEVICE(dscores, memory_key_balance_backward, u, v, y, f, scale, dscores, accumulate);
}

Tensor memory_key_balance(const Tensor& scores, const Tensor& u, const Tensor& v, const Tensor& rows, double coef) {
  check_inputs(scores, u, v, rows);
  const int64_t TH = scores.dim(0) * scores.dim(1), n = scores.dim(4);
  const DType dt = scores.dtype();
  Tensor y = alloc_activation({2, TH, n}, dt, scores.device());
  Tensor f = alloc_activation({2, n}, dt, scores.device()), p = alloc_activation({2, n}, dt, scores.device());
  memory_key_balance_forward(scores, u, v, rows, y, f, p);
  // The [2, n] reduction ends on the host: n values per side, one small copy.
  const std::vector<double> fh = f.to_doubles(), ph = p.to_doubles();
  double loss = 0;
  for (size_t i = 0; i < fh.size(); ++i) loss += double(n) * ph[i] * fh[i];
  Tensor out = alloc_activation({1}, dt, scores.device());
  out.copy_from(Tensor::from_doubles({coef * loss}, {1}, dt));
  if (needs_grad({&scores})) {
    out.set_requires_grad(true);
    current_tape()->record([scores, u, v, y, f, out, coef] {
      Tensor dout = grad_of(out);
      if (!dout) return;
      const double scale = coef * dout.to_doubles()[0];
      GradSlot ds = grad_slot(scores);
      if (ds) memory_key_balance_backward(u, v, y, f, scale, ds.grad, ds.accumulate);
    });
  }
  return out;
}

}  // namespace um::ops
