// CPU reference of the activation family; the math runs in double and rounds once to T.
#include "ultramem/ops/activation.h"

#include <cmath>

#include "src/cpu/activation_math.h"
#include "src/cpu/dispatch.h"

namespace um::cpu {

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
static void swiglu_forward_kernel(const T* x, T* y, const T* scale, int64_t rows, int64_t h) {
#pragma omp parallel for if (rows * h > (1 << 16))
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < h; ++k) {
      double g = double(x[r * 2 * h + k]), u = double(x[r * 2 * h + h + k]);
      y[r * h + k] = scale ? T(double(scale[r]) * (g * sigmoid(g) * u)) : T(g * sigmoid(g) * u);
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

template <typename T>
static void silu_mul_forward_kernel(const T* gate, const T* up, T* y, int64_t n) {
#pragma omp parallel for if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) {
    double g = double(gate[i]);
    y[i] = T(g * sigmoid(g) * double(up[i]));
  }
}

// Either output may be null (not wanted).
template <typename T>
static void silu_mul_backward_kernel(const T* gate, const T* up, const T* dy, T* dgate, bool acc_gate, T* dup,
                                     bool acc_up, int64_t n) {
#pragma omp parallel for if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) {
    double g = double(gate[i]), u = double(up[i]), d = double(dy[i]);
    double s = sigmoid(g);
    if (dgate) {
      double v = d * u * s * (1.0 + g * (1.0 - s));
      dgate[i] = acc_gate ? T(double(dgate[i]) + v) : T(v);
    }
    if (dup) {
      double v = d * g * s;
      dup[i] = acc_up ? T(double(dup[i]) + v) : T(v);
    }
  }
}

void gelu_forward(const Tensor& x, const Tensor& y) {
  UM_DISPATCH_CPU(x.dtype(), T, gelu_forward_kernel<T>(x.data_as<T>(), y.data_as<T>(), x.numel()));
}

void gelu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx, bool accumulate) {
  UM_DISPATCH_CPU(x.dtype(), T,
                  gelu_backward_kernel<T>(x.data_as<T>(), dy.data_as<T>(), dx.data_as<T>(), accumulate, x.numel()));
}

void swiglu_forward(const Tensor& x, const Tensor& y, const Tensor& row_scale) {
  int64_t h = x.dim(-1) / 2, rows = x.numel() / (2 * h);
  UM_DISPATCH_CPU(x.dtype(), T,
                  swiglu_forward_kernel<T>(x.data_as<T>(), y.data_as<T>(),
                                           row_scale.defined() ? row_scale.data_as<T>() : nullptr, rows, h));
}

void swiglu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx, bool accumulate) {
  int64_t h = x.dim(-1) / 2, rows = x.numel() / (2 * h);
  UM_DISPATCH_CPU(x.dtype(), T,
                  swiglu_backward_kernel<T>(x.data_as<T>(), dy.data_as<T>(), dx.data_as<T>(), accumulate, rows, h));
}

void silu_mul_forward(const Tensor& gate, const Tensor& up, const Tensor& y) {
  UM_DISPATCH_CPU(gate.dtype(), T,
                  silu_mul_forward_kernel<T>(gate.data_as<T>(), up.data_as<T>(), y.data_as<T>(), gate.numel()));
}

void silu_mul_backward(const Tensor& gate, const Tensor& up, const Tensor& dy, const Tensor& dgate, bool acc_gate,
                       const Tensor& dup, bool acc_up) {
  UM_DISPATCH_CPU(gate.dtype(), T,
                  silu_mul_backward_kernel<T>(gate.data_as<T>(), up.data_as<T>(), dy.data_as<T>(),
                                              dgate ? dgate.data_as<T>() : nullptr, acc_gate,
                                              dup ? dup.data_as<T>() : nullptr, acc_up, gate.numel()));
}

}  // namespace um::cpu
