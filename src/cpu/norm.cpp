// CPU reference of the normalisation family: per-row statistics and reductions in double, weight and
// bias gradients summed over rows in row order.
#include "ultramem/ops/norm.h"

#include <cmath>
#include <vector>

#include "src/cpu/dispatch.h"

namespace um::cpu {

// `mean` is null for RMSNorm (no centring); `w`/`b` are null when the norm has no weight/bias.
template <typename T>
static void norm_forward_kernel(const T* x, const T* w, const T* b, double eps, T* y, T* mean, T* rstd,
                                int64_t rows, int64_t C) {
#pragma omp parallel for if (rows * C > (1 << 16))
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * C;
    double mu = 0;
    if (mean) {
      for (int64_t c = 0; c < C; ++c) mu += double(xr[c]);
      mu /= double(C);
    }
    double var = 0;
    for (int64_t c = 0; c < C; ++c) var += (double(xr[c]) - mu) * (double(xr[c]) - mu);
    var /= double(C);
    double rs = 1.0 / std::sqrt(var + eps);
    for (int64_t c = 0; c < C; ++c) {
      double v = (double(xr[c]) - mu) * rs;
      if (w) v *= double(w[c]);
      if (b) v += double(b[c]);
      y[r * C + c] = T(v);
    }
    if (mean) mean[r] = T(mu);
    rstd[r] = T(rs);
  }
}

template <typename T>
static void norm_backward_dx_kernel(const T* x, const T* w, const T* mean, const T* rstd, const T* dy, T* dx,
                                    bool accumulate, int64_t rows, int64_t C) {
#pragma omp parallel for if (rows * C > (1 << 16))
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * C;
    const T* dyr = dy + r * C;
    double mu = mean ? double(mean[r]) : 0.0, rs = double(rstd[r]);
    double sum_g = 0, sum_gx = 0;
    for (int64_t c = 0; c < C; ++c) {
      double g = double(dyr[c]) * (w ? double(w[c]) : 1.0);
      sum_g += g;
      sum_gx += g * (double(xr[c]) - mu) * rs;
    }
    double mean_g = mean ? sum_g / double(C) : 0.0, mean_gx = sum_gx / double(C);
    for (int64_t c = 0; c < C; ++c) {
      double g = double(dyr[c]) * (w ? double(w[c]) : 1.0);
      double xhat = (double(xr[c]) - mu) * rs;
      double d = rs * (g - mean_g - xhat * mean_gx);
      T* o = dx + r * C + c;
      *o = accumulate ? T(double(*o) + d) : T(d);
    }
  }
}

// dweight = sum over rows of dy * xhat, dbias = sum over rows of dy (either output may be null).
template <typename T>
static void norm_backward_params_kernel(const T* x, const T* mean, const T* rstd, const T* dy, T* dw, bool acc_w,
                                        T* db, bool acc_b, int64_t rows, int64_t C) {
  std::vector<double> sw(size_t(C), 0.0), sb(size_t(C), 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    double mu = mean ? double(mean[r]) : 0.0, rs = double(rstd[r]);
    for (int64_t c = 0; c < C; ++c) {
      double g = double(dy[r * C + c]);
      sw[size_t(c)] += g * (double(x[r * C + c]) - mu) * rs;
      sb[size_t(c)] += g;
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    if (dw) dw[c] = acc_w ? T(double(dw[c]) + sw[size_t(c)]) : T(sw[size_t(c)]);
    if (db) db[c] = acc_b ? T(double(db[c]) + sb[size_t(c)]) : T(sb[size_t(c)]);
  }
}

template <typename T>
static T* data_or_null(const Tensor& t) {
  return t.defined() ? t.data_as<T>() : nullptr;
}
template <typename T>
static T* grad_data_or_null(const GradSlot& s) {
  return s ? s.grad.data_as<T>() : nullptr;
}

static void norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps, const Tensor& y,
                         const Tensor& mean, const Tensor& rstd) {
  int64_t C = x.dim(-1), rows = x.numel() / C;
  UM_DISPATCH_CPU(x.dtype(), T,
                  norm_forward_kernel<T>(x.data_as<T>(), data_or_null<T>(weight), data_or_null<T>(bias), double(eps),
                                         y.data_as<T>(), data_or_null<T>(mean), rstd.data_as<T>(), rows, C));
}

static void norm_backward(const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                          const Tensor& dy, const GradSlot& dx, const GradSlot& dweight, const GradSlot& dbias) {
  int64_t C = x.dim(-1), rows = x.numel() / C;
  UM_DISPATCH_CPU(x.dtype(), T, {
    if (dx)
      norm_backward_dx_kernel<T>(x.data_as<T>(), data_or_null<T>(weight), data_or_null<T>(mean), rstd.data_as<T>(),
                                 dy.data_as<T>(), dx.grad.data_as<T>(), dx.accumulate, rows, C);
    if (dweight || dbias)
      norm_backward_params_kernel<T>(x.data_as<T>(), data_or_null<T>(mean), rstd.data_as<T>(), dy.data_as<T>(),
                                     grad_data_or_null<T>(dweight), dweight.accumulate, grad_data_or_null<T>(dbias),
                                     dbias.accumulate, rows, C);
  });
}

void layer_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps, const Tensor& y,
                        const Tensor& mean, const Tensor& rstd) {
  norm_forward(x, weight, bias, eps, y, mean, rstd);
}

void rms_norm_forward(const Tensor& x, const Tensor& weight, float eps, const Tensor& y, const Tensor& rstd) {
  norm_forward(x, weight, Tensor(), eps, y, Tensor(), rstd);
}

void layer_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                         const Tensor& dy, const GradSlot& dx, const GradSlot& dweight, const GradSlot& dbias) {
  norm_backward(x, weight, mean, rstd, dy, dx, dweight, dbias);
}

void rms_norm_backward(const Tensor& x, const Tensor& weight, const Tensor& rstd, const Tensor& dy,
                       const GradSlot& dx, const GradSlot& dweight) {
  norm_backward(x, weight, Tensor(), rstd, dy, dx, dweight, GradSlot());
}

}  // namespace um::cpu
