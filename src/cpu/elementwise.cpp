#include "ultramem/ops/elementwise.h"

#include "src/cpu/dispatch.h"

namespace um::cpu {

// Kernels are templates called from the dtype dispatch (pragmas cannot sit inside macro arguments).
template <typename T>
static void add_kernel(const T* a, const T* b, T* y, int64_t n) {
#pragma omp parallel for if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) y[i] = a[i] + b[i];
}

void add_forward(const Tensor& a, const Tensor& b, const Tensor& y) {
  UM_DISPATCH_CPU(a.dtype(), T, add_kernel<T>(a.data_as<T>(), b.data_as<T>(), y.data_as<T>(), a.numel()));
}

template <typename T>
static void scale_rows_kernel(const T* x, const T* s, T* y, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) y[r * cols + c] = s[r] * x[r * cols + c];
}

void scale_rows_forward(const Tensor& x, const Tensor& s, const Tensor& y) {
  UM_DISPATCH_CPU(x.dtype(), T,
                  scale_rows_kernel<T>(x.data_as<T>(), s.data_as<T>(), y.data_as<T>(), x.dim(0), x.dim(1)));
}

template <typename T>
static void scale_rows_backward_kernel(const T* x, const T* s, const T* dy, const GradSlot& dx, const GradSlot& ds,
                                       int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    double dot = 0;
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t i = r * cols + c;
      dot += double(dy[i]) * double(x[i]);
      if (dx) {
        T& o = dx.grad.data_as<T>()[i];
        o = dx.accumulate ? o + s[r] * dy[i] : s[r] * dy[i];
      }
    }
    if (ds) {
      T& o = ds.grad.data_as<T>()[r];
      o = ds.accumulate ? T(double(o) + dot) : T(dot);
    }
  }
}

void scale_rows_backward(const Tensor& x, const Tensor& s, const Tensor& dy, const GradSlot& dx, const GradSlot& ds) {
  UM_DISPATCH_CPU(x.dtype(), T,
                  scale_rows_backward_kernel<T>(x.data_as<T>(), s.data_as<T>(), dy.data_as<T>(), dx, ds, x.dim(0),
                                                x.dim(1)));
}

// Reads element i of any float tensor as double.
static double load(const Tensor& t, int64_t i) {
  switch (t.dtype()) {
    case DType::f32: return t.data_as<float>()[i];
    case DType::f64: return t.data_as<double>()[i];
    case DType::bf16: return bf16_bits_to_float(t.data_as<uint16_t>()[i]);
    default: throw Error("cpu cast", "an f32, f64 or bf16 tensor", t.desc());
  }
}

static void store(const Tensor& t, int64_t i, double v) {
  switch (t.dtype()) {
    case DType::f32: t.data_as<float>()[i] = float(v); break;
    case DType::f64: t.data_as<double>()[i] = v; break;
    case DType::bf16: t.data_as<uint16_t>()[i] = float_to_bf16_bits(float(v)); break;
    default: throw Error("cpu cast", "an f32, f64 or bf16 tensor", t.desc());
  }
}

void cast_forward(const Tensor& src, const Tensor& dst) {
  for (int64_t i = 0, n = src.numel(); i < n; ++i) store(dst, i, load(src, i));
}

void accumulate(const Tensor& dst, const Tensor& src, bool acc) {
  if (dst.dtype() == src.dtype() && dst.dtype() != DType::bf16) {
    UM_DISPATCH_CPU(dst.dtype(), T, {
      T* d = dst.data_as<T>();
      const T* s = src.data_as<T>();
      int64_t n = dst.numel();
      if (acc) {
        for (int64_t i = 0; i < n; ++i) d[i] += s[i];
      } else {
        for (int64_t i = 0; i < n; ++i) d[i] = s[i];
      }
    });
    return;
  }
  for (int64_t i = 0, n = dst.numel(); i < n; ++i) store(dst, i, (acc ? load(dst, i) : 0.0) + load(src, i));
}

}  // namespace um::cpu
