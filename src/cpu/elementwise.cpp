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
