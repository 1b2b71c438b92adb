// CPU reference attention: per (batch, head) and query row, the scores against keys 0..t, their max,
// the softmax and the weighted sum of values. The backward pass recomputes each row's probabilities
// from the saved logsumexp, as the GPU kernels do, so both backends implement the same formulas:
//   P = exp(scale * q k^T - lse),  delta_t = dy_t . y_t,  dS = P * (dy v^T - delta)
//   dq = scale * dS k,  dk = scale * dS^T q,  dv = P^T dy   (dk, dv summed over a kv head's query heads)
#include <cmath>
#include <limits>
#include <vector>

#include "ultramem/ops/attention.h"
#include "src/cpu/dispatch.h"

namespace um::cpu {

namespace {

// Pointers into the packed layouts of one batch element.
template <typename T>
struct PackedHeads {
  const ops::AttentionShape& s;
  int64_t row;  // elements per token of qkv
  T* base;      // qkv (or dqkv) of batch b
  T* q(int64_t t, int64_t h) const { return base + t * row + h * s.head_dim; }
  T* k(int64_t t, int64_t g) const { return base + t * row + (s.heads + g) * s.head_dim; }
  T* v(int64_t t, int64_t g) const { return base + t * row + (s.heads + s.kv_heads + g) * s.head_dim; }
};

// Eight interleaved partial sums (a fixed order, so results are reproducible): independent chains the
// compiler turns into SIMD, where one running sum must stay a scalar chain under strict FP semantics.
template <typename T>
T dot(const T* a, const T* b, int64_t n) {
  T acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) acc[k] += a[i + k] * b[i + k];
  for (; i < n; ++i) acc[0] += a[i] * b[i];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

template <typename T>
void attention_forward_kernel(const ops::AttentionShape& s, const T* qkv, T* y, T* lse) {
  const int64_t B = s.batch, T_ = s.seq, H = s.heads, D = s.head_dim, group = s.heads / s.kv_heads;
  const T scale = T(s.scale);
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      PackedHeads<const T> in{s, s.qkv_row(), qkv + b * T_ * s.qkv_row()};
      const int64_t g = h / group;
      std::vector<T> p(static_cast<size_t>(T_));
      for (int64_t t = 0; t < T_; ++t) {
        const T* q = in.q(t, h);
        T m = -std::numeric_limits<T>::infinity();
        for (int64_t j = 0; j <= t; ++j) {
          p[j] = scale * dot(q, in.k(j, g), D);
          m = std::max(m, p[j]);
        }
        T l = 0;
        for (int64_t j = 0; j <= t; ++j) {
          p[j] = std::exp(p[j] - m);
          l += p[j];
        }
        T* out = y + (b * T_ + t) * s.y_row() + h * D;
        for (int64_t d = 0; d < D; ++d) out[d] = 0;
        for (int64_t j = 0; j <= t; ++j) {
          const T* v = in.v(j, g);
          for (int64_t d = 0; d < D; ++d) out[d] += p[j] * v[d];
        }
        for (int64_t d = 0; d < D; ++d) out[d] /= l;
        lse[(b * H + h) * T_ + t] = m + std::log(l);
      }
    }
  }
}

// Parallel over (batch, kv head): a task owns its kv head's dk, dv and its query heads' dq, so no two
// tasks write the same gradient element.
template <typename T>
void attention_backward_kernel(const ops::AttentionShape& s, const T* qkv, const T* y, const T* lse, const T* dy,
                               T* dqkv, bool accumulate) {
  const int64_t B = s.batch, T_ = s.seq, H = s.heads, Hkv = s.kv_heads, D = s.head_dim, group = H / Hkv;
  const T scale = T(s.scale);
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t g = 0; g < Hkv; ++g) {
      PackedHeads<const T> in{s, s.qkv_row(), qkv + b * T_ * s.qkv_row()};
      PackedHeads<T> grad{s, s.qkv_row(), dqkv + b * T_ * s.qkv_row()};
      std::vector<T> dk(static_cast<size_t>(T_ * D), T(0)), dv(static_cast<size_t>(T_ * D), T(0)), dq(static_cast<size_t>(D));
      for (int64_t h = g * group; h < (g + 1) * group; ++h) {
        for (int64_t t = 0; t < T_; ++t) {
          const T* q = in.q(t, h);
          const T* dyt = dy + (b * T_ + t) * s.y_row() + h * D;
          const T delta = dot(dyt, y + (b * T_ + t) * s.y_row() + h * D, D);
          const T row_lse = lse[(b * H + h) * T_ + t];
          for (int64_t d = 0; d < D; ++d) dq[d] = 0;
          for (int64_t j = 0; j <= t; ++j) {
            const T p = std::exp(scale * dot(q, in.k(j, g), D) - row_lse);
            const T dp = dot(dyt, in.v(j, g), D);
            const T ds = p * (dp - delta);
            const T* k = in.k(j, g);
            for (int64_t d = 0; d < D; ++d) {
              dq[d] += ds * k[d];
              dk[j * D + d] += ds * q[d];
              dv[j * D + d] += p * dyt[d];
            }
          }
          T* out = grad.q(t, h);
          for (int64_t d = 0; d < D; ++d) out[d] = (accumulate ? out[d] : T(0)) + scale * dq[d];
        }
      }
      for (int64_t t = 0; t < T_; ++t) {
        T* ok = grad.k(t, g);
        T* ov = grad.v(t, g);
        for (int64_t d = 0; d < D; ++d) {
          ok[d] = (accumulate ? ok[d] : T(0)) + scale * dk[t * D + d];
          ov[d] = (accumulate ? ov[d] : T(0)) + dv[t * D + d];
        }
      }
    }
  }
}

}  // namespace

void attention_forward(const ops::AttentionShape& s, const Tensor& qkv, const Tensor& y, const Tensor& lse) {
  UM_DISPATCH_CPU(qkv.dtype(), T,
                  attention_forward_kernel<T>(s, qkv.data_as<T>(), y.data_as<T>(), lse.data_as<T>()));
}

void attention_backward(const ops::AttentionShape& s, const Tensor& qkv, const Tensor& y, const Tensor& lse,
                        const Tensor& dy, const Tensor& dqkv, bool accumulate) {
  UM_DISPATCH_CPU(qkv.dtype(), T,
                  attention_backward_kernel<T>(s, qkv.data_as<T>(), y.data_as<T>(), lse.data_as<T>(),
                                               dy.data_as<T>(), dqkv.data_as<T>(), accumulate));
}

}  // namespace um::cpu
