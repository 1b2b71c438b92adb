// CPU reference of the memory lookup family: plain loops in double, rounded once to the output's
// dtype; the table scatter-adds run in position order (t * M + s), as the embedding backward does.
#include "ultramem/ops/memory_lookup.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "src/cpu/activation_math.h"
#include "src/cpu/dispatch.h"

namespace um::cpu {
namespace {

struct Geometry {
  int64_t T, M, C, N, V, P, groups;
  bool pre, gelu;
};

Geometry geometry(const Tensor& indices, const Tensor& weights, const Tensor& values, const Tensor& pre_values,
                  const ops::LookupArgs& a) {
  return {indices.dim(0), indices.dim(1), weights.dim(2), values.dim(0), values.dim(1),
          pre_values.defined() ? pre_values.dim(1) : 0, a.groups, pre_values.defined(), a.gelu_gate};
}

// Physical row and output group of every slot, after validating every index and perm entry (so an
// Error leaves all outputs untouched).
struct Resolved {
  std::vector<int64_t> row;
  std::vector<int32_t> group;
};

Resolved resolve(const Tensor& indices, const Tensor& perm, const ops::LookupArgs& a, int64_t N, const char* op) {
  const int64_t n = indices.numel(), vn = a.virtual_count();
  const int32_t* ind = indices.data_as<int32_t>();
  const int32_t* pm = perm.defined() ? perm.data_as<int32_t>() : nullptr;
  Resolved r{std::vector<int64_t>(size_t(n)), std::vector<int32_t>(size_t(n))};
  for (int64_t p = 0; p < n; ++p) {
    const int64_t idx = ind[p];
    if (idx < 0 || idx >= vn)
      throw Error(detail::concat(op, ": indices position ", p), detail::concat("an index in [0, ", vn, ")"),
                  std::to_string(idx));
    const int64_t x = pm ? int64_t(pm[idx]) : idx;
    if (x < 0 || x >= vn)
      throw Error(detail::concat(op, ": perm position ", idx), detail::concat("a virtual index in [0, ", vn, ")"),
                  std::to_string(x));
    r.row[size_t(p)] = (x % a.value_num + a.offset) % N;
    r.group[size_t(p)] = a.groups == 1 ? 0 : int32_t(x / a.value_num);
  }
  return r;
}

template <typename T>
double dot(const T* a, const T* b, int64_t n) {
  double s = 0;
  for (int64_t k = 0; k < n; ++k) s += double(a[k]) * double(b[k]);
  return s;
}

// T: values, pre-values and the output; W: weights (f32, or f64 with f64 values).
template <typename T, typename W>
void forward_kernel(const Geometry& g, const Resolved& r, const W* weights, const T* values, const T* pre_in,
                    const T* pre_values, T* out, int32_t* used) {
  const int64_t cpc = g.V / g.C, width = g.groups * g.V;
#pragma omp parallel for if (g.T * g.M * g.V > (1 << 16))
  for (int64_t t = 0; t < g.T; ++t) {
    std::vector<double> acc(size_t(width), 0.0);
    for (int64_t s = 0; s < g.M; ++s) {
      const int64_t p = t * g.M + s, row = r.row[size_t(p)];
      double gate = 1.0;
      if (g.pre) {
        const double score = dot(pre_in + t * g.P, pre_values + row * g.P, g.P);
        gate = g.gelu ? gelu_value(score) : score;
      }
      double* o = acc.data() + int64_t(r.group[size_t(p)]) * g.V;
      const T* v = values + row * g.V;
      for (int64_t c = 0; c < g.C; ++c) {
        const double coef = gate * double(weights[p * g.C + c]);
        for (int64_t k = c * cpc; k < (c + 1) * cpc; ++k) o[k] += coef * double(v[k]);
      }
    }
    for (int64_t k = 0; k < width; ++k) out[t * width + k] = T(acc[size_t(k)]);
  }
  if (used)
    for (int64_t row : r.row) used[row] = 1;
}

template <typename T, typename W>
void backward_kernel(const Geometry& g, const Resolved& r, const W* weights, const T* values, const T* pre_in,
                     const T* pre_values, const T* dout, W* dweights, bool acc_w, T* dvalues, bool acc_v, T* dpre_in,
                     bool acc_p, T* dpre_values, bool acc_pv) {
  const int64_t n = g.T * g.M, cpc = g.V / g.C, width = g.groups * g.V;
  std::vector<double> gate(size_t(n), 1.0), dscore(size_t(n), 0.0);
#pragma omp parallel for if (n * g.V > (1 << 16))
  for (int64_t t = 0; t < g.T; ++t) {
    std::vector<double> dpre(size_t(g.P), 0.0);
    for (int64_t s = 0; s < g.M; ++s) {
      const int64_t p = t * g.M + s, row = r.row[size_t(p)];
      const T* d = dout + t * width + int64_t(r.group[size_t(p)]) * g.V;
      const T* v = values + row * g.V;
      double score = 0.0;
      if (g.pre) {
        score = dot(pre_in + t * g.P, pre_values + row * g.P, g.P);
        gate[size_t(p)] = g.gelu ? gelu_value(score) : score;
      }
      double dgate = 0.0;
      for (int64_t c = 0; c < g.C; ++c) {
        const double dt = dot(d + c * cpc, v + c * cpc, cpc);
        dgate += double(weights[p * g.C + c]) * dt;
        if (dweights) {
          const double dw = gate[size_t(p)] * dt;
          W& o = dweights[p * g.C + c];
          o = acc_w ? W(double(o) + dw) : W(dw);
        }
      }
      if (g.pre) {
        dscore[size_t(p)] = dgate * (g.gelu ? gelu_derivative(score) : 1.0);
        const T* pv = pre_values + row * g.P;
        for (int64_t k = 0; k < g.P; ++k) dpre[size_t(k)] += dscore[size_t(p)] * double(pv[k]);
      }
    }
    if (dpre_in)
      for (int64_t k = 0; k < g.P; ++k) {
        T& o = dpre_in[t * g.P + k];
        o = acc_p ? T(double(o) + dpre[size_t(k)]) : T(dpre[size_t(k)]);
      }
  }
  // The scatter-adds, in position order (rows that no slot reads stay zero, or untouched).
  if (dvalues) {
    if (!acc_v) std::memset(dvalues, 0, size_t(g.N * g.V) * sizeof(T));
    for (int64_t p = 0; p < n; ++p) {
      const int64_t t = p / g.M;
      const T* d = dout + t * width + int64_t(r.group[size_t(p)]) * g.V;
      T* o = dvalues + r.row[size_t(p)] * g.V;
      for (int64_t c = 0; c < g.C; ++c) {
        const double coef = gate[size_t(p)] * double(weights[p * g.C + c]);
        for (int64_t k = c * cpc; k < (c + 1) * cpc; ++k) o[k] += T(coef * double(d[k]));
      }
    }
  }
  if (dpre_values) {
    if (!acc_pv) std::memset(dpre_values, 0, size_t(g.N * g.P) * sizeof(T));
    for (int64_t p = 0; p < n; ++p) {
      const T* x = pre_in + (p / g.M) * g.P;
      T* o = dpre_values + r.row[size_t(p)] * g.P;
      for (int64_t k = 0; k < g.P; ++k) o[k] += T(dscore[size_t(p)] * double(x[k]));
    }
  }
}

template <typename T>
const T* ptr(const Tensor& t) {
  return t.defined() ? t.data_as<T>() : nullptr;
}

// Runs body with T = the values' type and W = the weights' type.
#define UM_LOOKUP_DISPATCH(values, weights, ...)                                        \
  UM_DISPATCH_CPU((values).dtype(), T, {                                                 \
    if ((weights).dtype() == DType::f64) {                                               \
      using W = double;                                                                  \
      __VA_ARGS__;                                                                       \
    } else {                                                                             \
      using W = float;                                                                   \
      __VA_ARGS__;                                                                       \
    }                                                                                    \
  })

}  // namespace

void memory_lookup_forward(const Tensor& indices, const Tensor& weights, const Tensor& values, const Tensor& perm,
                           const Tensor& pre_in, const Tensor& pre_values, const ops::LookupArgs& args,
                           const Tensor& out, const Tensor& used) {
  const Geometry g = geometry(indices, weights, values, pre_values, args);
  const Resolved r = resolve(indices, perm, args, g.N, "memory_lookup");
  UM_LOOKUP_DISPATCH(values, weights,
                     forward_kernel<T, W>(g, r, weights.data_as<W>(), values.data_as<T>(), ptr<T>(pre_in),
                                          ptr<T>(pre_values), out.data_as<T>(),
                                          used.defined() ? used.data_as<int32_t>() : nullptr));
}

void memory_lookup_backward(const Tensor& indices, const Tensor& weights, const Tensor& values, const Tensor& perm,
                            const Tensor& pre_in, const Tensor& pre_values, const ops::LookupArgs& args,
                            const Tensor& dout, const Tensor& dweights, bool acc_w, const Tensor& dvalues,
                            bool acc_v, const Tensor& dpre_in, bool acc_p, const Tensor& dpre_values, bool acc_pv) {
  const Geometry g = geometry(indices, weights, values, pre_values, args);
  const Resolved r = resolve(indices, perm, args, g.N, "memory_lookup backward");
  UM_LOOKUP_DISPATCH(values, weights,
                     backward_kernel<T, W>(g, r, weights.data_as<W>(), values.data_as<T>(), ptr<T>(pre_in),
                                           ptr<T>(pre_values), dout.data_as<T>(),
                                           dweights.defined() ? dweights.data_as<W>() : nullptr, acc_w,
                                           dvalues.defined() ? dvalues.data_as<T>() : nullptr, acc_v,
                                           dpre_in.defined() ? dpre_in.data_as<T>() : nullptr, acc_p,
                                           dpre_values.defined() ? dpre_values.data_as<T>() : nullptr, acc_pv));
}

// ---- softmax over the last dimension ----

template <typename T>
static void softmax_forward_kernel(const T* x, T* y, int64_t rows, int64_t L) {
#pragma omp parallel for if (rows * L > (1 << 16))
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * L;
    double m = double(xr[0]), sum = 0.0;
    for (int64_t k = 1; k < L; ++k) m = std::max(m, double(xr[k]));
    for (int64_t k = 0; k < L; ++k) sum += std::exp(double(xr[k]) - m);
    for (int64_t k = 0; k < L; ++k) y[r * L + k] = T(std::exp(double(xr[k]) - m) / sum);
  }
}

template <typename T>
static void softmax_backward_kernel(const T* y, const T* dy, T* dx, bool accumulate, int64_t rows, int64_t L) {
#pragma omp parallel for if (rows * L > (1 << 16))
  for (int64_t r = 0; r < rows; ++r) {
    const T *yr = y + r * L, *dr = dy + r * L;
    double d = 0.0;
    for (int64_t k = 0; k < L; ++k) d += double(dr[k]) * double(yr[k]);
    for (int64_t k = 0; k < L; ++k) {
      const double v = double(yr[k]) * (double(dr[k]) - d);
      T& o = dx[r * L + k];
      o = accumulate ? T(double(o) + v) : T(v);
    }
  }
}

void softmax_lastdim_forward(const Tensor& x, const Tensor& y) {
  const int64_t L = x.dim(-1), rows = x.numel() / L;
  UM_DISPATCH_CPU(x.dtype(), T, softmax_forward_kernel<T>(x.data_as<T>(), y.data_as<T>(), rows, L));
}

void softmax_lastdim_backward(const Tensor& y, const Tensor& dy, const Tensor& dx, bool accumulate) {
  const int64_t L = y.dim(-1), rows = y.numel() / L;
  UM_DISPATCH_CPU(y.dtype(), T,
                  softmax_backward_kernel<T>(y.data_as<T>(), dy.data_as<T>(), dx.data_as<T>(), accumulate, rows, L));
}

}  // namespace um::cpu
