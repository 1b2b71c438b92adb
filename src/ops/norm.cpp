#include "ultramem/ops/norm.h"

#include "ultramem/core/arena.h"
#include "src/ops/dispatch.h"

namespace um::ops {

// Statistics are f32, or f64 when the CPU runs in f64.
static DType stat_dtype(const Tensor& x) { return x.dtype() == DType::f64 ? DType::f64 : DType::f32; }

// Parameter gradients are f32 master gradients on the GPU and the parameter's dtype on the CPU.
static DType param_grad_dtype(const Tensor& x) { return x.device().is_cuda() ? DType::f32 : x.dtype(); }

// Checks x [..., C] and the optional affine parameters; returns the number of rows.
static int64_t check_norm_input(const char* op, const Tensor& x, const Tensor& weight, const Tensor& bias) {
  if (!x.defined() || x.ndim() < 1 || x.dim(-1) < 1)
    throw Error(detail::concat(op, ": x"), "shape [..., C] with C >= 1", x.desc());
  Shape c{x.dim(-1)};
  for (const Tensor* p : {&weight, &bias}) {
    if (!p->defined()) continue;
    const char* what = p == &weight ? "weight" : "bias";
    check_shape(*p, c, detail::concat(op, ": ", what).c_str());
    check_dtype(*p, x.dtype(), detail::concat(op, ": ", what, " (x's dtype)").c_str());
    check_same_device(x, *p, detail::concat(op, ": x and ", what).c_str());
  }
  return x.numel() / x.dim(-1);
}

static void check_stat(const char* op, const char* what, const Tensor& s, const Tensor& x, int64_t rows) {
  std::string where = detail::concat(op, ": ", what);
  check_shape(s, Shape{rows}, where.c_str());
  check_dtype(s, stat_dtype(x), where.c_str());
  check_same_device(x, s, where.c_str());
}

static void check_same_as_x(const char* op, const char* what, const Tensor& t, const Tensor& x) {
  std::string where = detail::concat(op, ": ", what);
  check_shape(t, x.shape(), where.c_str());
  check_dtype(t, x.dtype(), where.c_str());
  check_same_device(x, t, where.c_str());
}

static void check_param_grad(const char* op, const char* what, const GradSlot& g, const Tensor& x) {
  if (!g) return;
  std::string where = detail::concat(op, ": ", what);
  check_shape(g.grad, Shape{x.dim(-1)}, where.c_str());
  check_dtype(g.grad, param_grad_dtype(x), where.c_str());
  check_same_device(x, g.grad, where.c_str());
}

void layer_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps, const Tensor& y,
                        const Tensor& mean, const Tensor& rstd) {
  const char* op = "layer_norm";
  int64_t rows = check_norm_input(op, x, weight, bias);
  check_same_as_x(op, "y", y, x);
  check_stat(op, "mean", mean, x, rows);
  check_stat(op, "rstd", rstd, x, rows);
  UM_DISPATCH_DEVICE(x, layer_norm_forward, x, weight, bias, eps, y, mean, rstd);
}

void rms_norm_forward(const Tensor& x, const Tensor& weight, float eps, const Tensor& y, const Tensor& rstd) {
  const char* op = "rms_norm";
  int64_t rows = check_norm_input(op, x, weight, Tensor());
  check_same_as_x(op, "y", y, x);
  check_stat(op, "rstd", rstd, x, rows);
  UM_DISPATCH_DEVICE(x, rms_norm_forward, x, weight, eps, y, rstd);
}

void layer_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                         const Tensor& dy, const GradSlot& dx, const GradSlot& dweight, const GradSlot& dbias) {
  const char* op = "layer_norm backward";
  int64_t rows = check_norm_input(op, x, weight, Tensor());
  check_stat(op, "mean", mean, x, rows);
  check_stat(op, "rstd", rstd, x, rows);
  check_same_as_x(op, "dy", dy, x);
  if (dx) check_same_as_x(op, "dx", dx.grad, x);
  check_param_grad(op, "dweight", dweight, x);
  check_param_grad(op, "dbias", dbias, x);
  UM_DISPATCH_DEVICE(x, layer_norm_backward, x, weight, mean, rstd, dy, dx, dweight, dbias);
}

void rms_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& rstd, const Tensor& dy,
                       const GradSlot& dx, const GradSlot& dweight) {
  const char* op = "rms_norm backward";
  int64_t rows = check_norm_input(op, x, weight, Tensor());
  check_stat(op, "rstd", rstd, x, rows);
  check_same_as_x(op, "dy", dy, x);
  if (dx) check_same_as_x(op, "dx", dx.grad, x);
  check_param_grad(op, "dweight", dweight, x);
  UM_DISPATCH_DEVICE(x, rms_norm_backward, x, weight, rstd, dy, dx, dweight);
}

Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps) {
  int64_t rows = check_norm_input("layer_norm", x, weight, bias);
  Device dev = x.device();
  Tensor y = alloc_activation(x.shape(), x.dtype(), dev);
  Tensor mean = alloc_activation(Shape{rows}, stat_dtype(x), dev);
  Tensor rstd = alloc_activation(Shape{rows}, stat_dtype(x), dev);
  layer_norm_forward(x, weight, bias, eps, y, mean, rstd);
  if (needs_grad({&x, &weight, &bias})) {
    y.set_requires_grad(true);
    current_tape()->record([x, weight, bias, mean, rstd, y] {
      Tensor dy = grad_of(y);
      if (!dy) return;
      layer_norm_backward(x, weight, mean, rstd, dy, grad_slot(x), grad_slot(weight), grad_slot(bias));
    });
  }
  return y;
}

Tensor rms_norm(const Tensor& x, const Tensor& weight, float eps) {
  int64_t rows = check_norm_input("rms_norm", x, weight, Tensor());
  Device dev = x.device();
  Tensor y = alloc_activation(x.shape(), x.dtype(), dev);
  Tensor rstd = alloc_activation(Shape{rows}, stat_dtype(x), dev);
  rms_norm_forward(x, weight, eps, y, rstd);
  if (needs_grad({&x, &weight})) {
    y.set_requires_grad(true);
    current_tape()->record([x, weight, rstd, y] {
      Tensor dy = grad_of(y);
      if (!dy) return;
      rms_norm_backward(x, weight, rstd, dy, grad_slot(x), grad_slot(weight));
    });
  }
  return y;
}

}  // namespace um::ops
