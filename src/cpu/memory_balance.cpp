// CPU reference of the key-balance loss (plain loops, f32 or f64 like the scores).
#include <algorithm>
#include <cmath>
#include <vector>

#include "ultramem/ops/memory_balance.h"
#include "src/cpu/dispatch.h"

namespace um::cpu {

template <typename T>
static void forward_impl(const Tensor& scores, const Tensor& u, const Tensor& v, const Tensor& rows, const Tensor& y,
                         const Tensor& f, const Tensor& p) {
  const int64_t Tn = scores.dim(0), H = scores.dim(1), r = scores.dim(3), n = scores.dim(4), knn = rows.dim(3);
  const T* s = scores.data_as<T>();
  const int32_t* rw = rows.data_as<int32_t>();
  const float* uv[2] = {u.defined() ? u.data_as<float>() : nullptr, v.defined() ? v.data_as<float>() : nullptr};
  T* yo = y.data_as<T>();
  T* fo = f.data_as<T>();
  T* po = p.data_as<T>();
  const int64_t TH = Tn * H;
  for (int side = 0; side < 2; ++side) {
    std::vector<int64_t> counts(size_t(n), 0);
    std::vector<double> psum(size_t(n), 0.0);
    for (int64_t t = 0; t < Tn; ++t)
      for (int64_t h = 0; h < H; ++h) {
        std::vector<double> a(size_t(n), 0.0);
        for (int64_t q = 0; q < r; ++q) {
          const double w = uv[side] ? double(uv[side][h * r + q]) : 1.0;
          const T* row = s + (((t * H + h) * 2 + side) * r + q) * n;
          for (int64_t i = 0; i < n; ++i) a[size_t(i)] += w * double(row[i]);
        }
        const double mx = *std::max_element(a.begin(), a.end());
        double z = 0;
        for (auto& x : a) z += (x = std::exp(x - mx));
        T* yr = yo + (side * TH + t * H + h) * n;
        for (int64_t i = 0; i < n; ++i) {
          yr[i] = T(a[size_t(i)] / z);
          psum[size_t(i)] += double(yr[i]);
        }
        const int32_t* picks = rw + ((t * H + h) * 2 + side) * knn;
        for (int64_t k = 0; k < knn; ++k)
          if (picks[k] >= 0 && picks[k] < n) ++counts[size_t(picks[k])];
      }
    const double total = double(TH * knn);
    for (int64_t i = 0; i < n; ++i) {
      fo[side * n + i] = T(double(counts[size_t(i)]) / total);
      po[side * n + i] = T(psum[size_t(i)] / double(TH));
    }
  }
}

template <typename T>
static void backward_impl(const Tensor& u, const Tensor& v, const Tensor& y, const Tensor& f, double scale,
                          const Tensor& dscores, bool accumulate) {
  const int64_t Tn = dscores.dim(0), H = dscores.dim(1), r = dscores.dim(3), n = dscores.dim(4), TH = Tn * H;
  const float* uv[2] = {u.defined() ? u.data_as<float>() : nullptr, v.defined() ? v.data_as<float>() : nullptr};
  const T* yi = y.data_as<T>();
  const T* fi = f.data_as<T>();
  T* ds = dscores.data_as<T>();
  const double c = scale * double(n) / double(TH);
  for (int side = 0; side < 2; ++side)
    for (int64_t t = 0; t < Tn; ++t)
      for (int64_t h = 0; h < H; ++h) {
        const T* yr = yi + (side * TH + t * H + h) * n;
        const T* fr = fi + side * n;
        double g = 0;
        for (int64_t i = 0; i < n; ++i) g += double(yr[i]) * double(fr[i]);
        for (int64_t q = 0; q < r; ++q) {
          const double w = uv[side] ? double(uv[side][h * r + q]) : 1.0;
          T* out = ds + (((t * H + h) * 2 + side) * r + q) * n;
          for (int64_t i = 0; i < n; ++i) {
            const double d = c * w * double(yr[i]) * (double(fr[i]) - g);
            out[i] = T((accumulate ? double(out[i]) : 0.0) + d);
          }
        }
      }
}

void memory_key_balance_forward(const Tensor& scores, const Tensor& u, const Tensor& v, const Tensor& rows,
                                const Tensor& y, const Tensor& f, const Tensor& p) {
  UM_DISPATCH_CPU(scores.dtype(), T, forward_impl<T>(scores, u, v, rows, y, f, p));
}

void memory_key_balance_backward(const Tensor& u, const Tensor& v, const Tensor& y, const Tensor& f, double scale,
                                 const Tensor& dscores, bool accumulate) {
  UM_DISPATCH_CPU(dscores.dtype(), T, backward_impl<T>(u, v, y, f, scale, dscores, accumulate));
}

}  // namespace um::cpu
