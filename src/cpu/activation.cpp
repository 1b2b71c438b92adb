// CPU reference of the activation family; the math runs in double and rounds once to T.
#include "ultramem/ops/activation.h"

#include <cmath>

#include "src/cpu/dispatch.h"

namespace um::cpu {

static constexpr double kGeluScale = 0.7978845608028654;  // sqrt(2 / pi)
static constexpr double kGeluCubic = 0.044715;

static double gelu_value(double x) {
  return 0.5 * x * (1.0 + std::tanh(kGeluScale * (x + kGeluCubic * x * x * x)));
}

static double gelu_derivative(double x) {
  double t = std::tanh(kGeluScale * (x + kGeluCubic * x * x * x));
  return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * kGeluScale * (1.0 + 3.0 * kGeluCubic * x * x);
}

static double sigmoid(double g) { return 1.0 / (1.0 + std::exp(-g)); }

template <typename T>
static void gelu_forward_kernel(const T* x, T* y, int64_t n) {
#pragma omp parallel for if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) y[i] = T(gelu_value(double(x[i])));
}

template <typename T>
static void gelu_backward_kernel(const T* x, const T* dy, T* dx, bool accumulate, int64_t n) {
#pragma omp parallel for if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) {
    double d = double(dy[i]) * gelu_derivative(double(x[i]));
    dx[i] = accumulate ? T(double(dx[i]) + d) : T(d);
  }
}

template <typename T>
static void swiglu_forward_kernel(const T* x, T* y, int64_t rows, int64_t h) {
#pragma omp parallel for if (rows * h > (1 << 16))
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < h; ++k) {
      double g = double(x[r * 2 * h + k]), u = double(x[r * 2 * h + h + k]);
      y[r * h + k] = T(g * sigmoid(g) * u);
    }
}

// d/dgate = dy * up * sigmoid(g) * (1 + g (1 - sigmoid(g))),  d/dup = dy * silu(g).
template <typename T>
static void swiglu_backward_kernel(const T* x, const T* dy, T* dx, bool accumulate, int64_t rows, int64_t h) {
#pragma omp parallel for if (rows * h > (1 << 16))
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < h; ++k) {
      double g = double(x[r * 2 * h + k]), u = double(x[r * 2 * h + h + k]), d = double(dy[r * h + k]);
      double s = sigmoid(g);
      double dgate = d * u * s * (1.0 + g * (1.0 - s)), dup = d * g * s;
      T* og = dx + r * 2 * h + k;
      T* ou = og + h;
      *og = accumulate ? T(double(*og) + dgate) : T(dgate);
      *ou = accumulate ? T(double(*ou) + dup) : T(dup);
    }
}

void gelu_forward(const Tensor& x, const Tensor& y) {
  UM_DISPATCH_CPU(x.dtype(), T, gelu_forward_kernel<T>(x.data_as<T>(), y.data_as<T>(), x.numel()));
}

void gelu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx, bool accumulate) {
  UM_DISPATCH_CPU(x.dtype(), T,
                  gelu_backward_kernel<T>(x.data_as<T>(), dy.data_as<T>(), dx.data_as<T>(), accumulate, x.numel()));
}

void swiglu_forward(const Tensor& x, const Tensor& y) {
  int64_t h = x.dim(-1) / 2, rows = x.numel() / (2 * h);
  UM_DISPATCH_CPU(x.dtype(), T, swiglu_forward_kernel<T>(x.data_as<T>(), y.data_as<T>(), rows, h));
}

void swiglu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx, bool accumulate) {
  int64_t h = x.dim(-1) / 2, rows = x.numel() / (2 * h);
  UM_DISPATCH_CPU(x.dtype(), T,
                  swiglu_backward_kernel<T>(x.data_as<T>(), dy.data_as<T>(), dx.data_as<T>(), accumulate, rows, h));
}

}  // namespace um::cpu
