// CPU reference of the MoE router: softmax, top-k (+ renormalisation), balance and z losses.
#include <algorithm>
#include <cmath>
#include <vector>

#include "src/cpu/dispatch.h"
#include "ultramem/ops/moe_router.h"

namespace um::cpu {
namespace {

template <typename T>
void forward_impl(const Tensor& logits, const ops::MoeRouterOptions& o, const Tensor& probs, const Tensor& lse,
                  const Tensor& weights, const Tensor& experts, const Tensor& counts, const Tensor& balance_loss,
                  const Tensor& z_loss) {
  const int64_t N = logits.dim(0), E = logits.dim(1), k = o.top_k;
  const T* x = logits.data_as<T>();
  T* p = probs.data_as<T>();
  T* l = lse.data_as<T>();
  T* w = weights.data_as<T>();
  int32_t* ex = experts.data_as<int32_t>();
  int32_t* cnt = counts.data_as<int32_t>();
  std::fill(cnt, cnt + E, 0);
  std::vector<double> prob_sum(size_t(E), 0.0);
  double z_sum = 0;
  for (int64_t t = 0; t < N; ++t) {
    const T* xr = x + t * E;
    T* pr = p + t * E;
    T m = xr[0];
    for (int64_t e = 1; e < E; ++e) m = std::max(m, xr[e]);
    T s = 0;
    for (int64_t e = 0; e < E; ++e) s += std::exp(xr[e] - m);
    const T lse_t = m + std::log(s);
    l[t] = lse_t;
    z_sum += double(lse_t) * double(lse_t);
    for (int64_t e = 0; e < E; ++e) {
      pr[e] = std::exp(xr[e] - m) / s;
      prob_sum[size_t(e)] += double(pr[e]);
    }
    // Top-k: descending, equal values keep the lower index first (strict comparison).
    std::vector<int64_t> chosen;
    for (int64_t j = 0; j < k; ++j) {
      int64_t best = -1;
      for (int64_t e = 0; e < E; ++e) {
        if (std::find(chosen.begin(), chosen.end(), e) != chosen.end()) continue;
        if (best < 0 || pr[e] > pr[best]) best = e;
      }
      chosen.push_back(best);
    }
    T sel = 0;
    for (int64_t j = 0; j < k; ++j) sel += pr[chosen[size_t(j)]];
    for (int64_t j = 0; j < k; ++j) {
      const int64_t e = chosen[size_t(j)];
      ex[t * k + j] = int32_t(e);
      w[t * k + j] = o.renormalize ? pr[e] / sel : pr[e];
      ++cnt[e];
    }
  }
  double bal = 0;
  for (int64_t e = 0; e < E; ++e) bal += double(cnt[e]) / double(N * k) * (prob_sum[size_t(e)] / double(N));
  balance_loss.data_as<T>()[0] = T(o.balance_weight * double(E) * bal);
  z_loss.data_as<T>()[0] = T(o.z_weight * z_sum / double(N));
}

template <typename T>
void backward_impl(const ops::MoeRouterOptions& o, const Tensor& probs, const Tensor& lse, const Tensor& weights,
                   const Tensor& experts, const Tensor& counts, const Tensor& dweights, const Tensor& dbalance,
                   const Tensor& dz, const GradSlot& dlogits) {
  const int64_t N = probs.dim(0), E = probs.dim(1), k = o.top_k;
  const T* p = probs.data_as<T>();
  const T* l = lse.data_as<T>();
  const T* w = weights.data_as<T>();
  const int32_t* ex = experts.data_as<int32_t>();
  const int32_t* cnt = counts.data_as<int32_t>();
  const T* gw = dweights.defined() ? dweights.data_as<T>() : nullptr;
  const T gb = dbalance.defined() ? dbalance.data_as<T>()[0] : T(0);
  const T gz = dz.defined() ? dz.data_as<T>()[0] : T(0);
  // d balance / d p[t, e] = balance_weight E counts[e] / (N^2 k), the same for every token.
  const T bal_scale = T(o.balance_weight * double(E) / (double(N) * double(N) * double(k))) * gb;
  const T z_scale = T(2.0 * o.z_weight / double(N)) * gz;
  T* g = dlogits.grad.data_as<T>();
  std::vector<T> dp(static_cast<size_t>(E));
  for (int64_t t = 0; t < N; ++t) {
    const T* pr = p + t * E;
    for (int64_t e = 0; e < E; ++e) dp[size_t(e)] = bal_scale * T(cnt[e]);
    if (gw) {
      T sel = 0, gdotw = 0;
      for (int64_t j = 0; j < k; ++j) {
        sel += pr[ex[t * k + j]];
        gdotw += gw[t * k + j] * w[t * k + j];
      }
      for (int64_t j = 0; j < k; ++j) {
        const T gj = gw[t * k + j];
        dp[size_t(ex[t * k + j])] += o.renormalize ? (gj - gdotw) / sel : gj;
      }
    }
    T s = 0;
    for (int64_t e = 0; e < E; ++e) s += pr[e] * dp[size_t(e)];
    T* gr = g + t * E;
    for (int64_t e = 0; e < E; ++e) {
      const T v = pr[e] * (dp[size_t(e)] - s) + z_scale * l[t] * pr[e];
      gr[e] = dlogits.accumulate ? gr[e] + v : v;
    }
  }
}

}  // namespace

void moe_router_forward(const Tensor& logits, const ops::MoeRouterOptions& o, const Tensor& probs, const Tensor& lse,
                        const Tensor& weights, const Tensor& experts, const Tensor& counts,
                        const Tensor& balance_loss, const Tensor& z_loss) {
  UM_DISPATCH_CPU(logits.dtype(), T,
                  forward_impl<T>(logits, o, probs, lse, weights, experts, counts, balance_loss, z_loss));
}

void moe_router_backward(const ops::MoeRouterOptions& o, const Tensor& probs, const Tensor& lse, const Tensor& weights,
                         const Tensor& experts, const Tensor& counts, const Tensor& dweights, const Tensor& dbalance,
                         const Tensor& dz, const GradSlot& dlogits) {
  UM_DISPATCH_CPU(probs.dtype(), T,
                  backward_impl<T>(o, probs, lse, weights, experts, counts, dweights, dbalance, dz, dlogits));
}

}  // namespace um::cpu
