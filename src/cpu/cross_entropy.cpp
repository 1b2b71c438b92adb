// CPU reference of the cross-entropy family: per-row logsumexp accumulated in double (exponentials in
// the tensor's own precision: the f32 trainer spends most of its softmax time in exp), row losses
// reduced in row order.
#include "ultramem/ops/cross_entropy.h"

#include <cmath>
#include <limits>

#include "src/cpu/dispatch.h"

namespace um::cpu {

[[noreturn]] static void throw_bad_target(int64_t row, int64_t target, int64_t valid_vocab) {
  throw Error(detail::concat("cross_entropy: targets row ", row),
              detail::concat("a class in [0, ", valid_vocab, ") or -1 (ignored position)"), std::to_string(target));
}

// logsumexp over x[0, v) with the running maximum, so large logits do not overflow.
template <typename T>
static double row_logsumexp(const T* x, int64_t v) {
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < v; ++j) m = std::max(m, double(x[j]));
  if (std::isinf(m)) return m;  // all -inf (lse = -inf) or some +inf (lse = +inf)
  double s = 0;
  const T mt = T(m);
  for (int64_t j = 0; j < v; ++j) s += double(std::exp(x[j] - mt));
  return m + std::log(s);
}

template <typename T>
static void forward_kernel(const T* logits, const int32_t* targets, int64_t n, int64_t vp, int64_t v,
                           T* row_loss, T* lse, T* loss, int32_t* count) {
  for (int64_t r = 0; r < n; ++r)
    if (targets[r] < -1 || targets[r] >= v) throw_bad_target(r, targets[r], v);
#pragma omp parallel for if (n * vp > (1 << 16))
  for (int64_t r = 0; r < n; ++r) {
    const T* x = logits + r * vp;
    double l = row_logsumexp(x, v);
    lse[r] = T(l);
    row_loss[r] = targets[r] < 0 ? T(0) : T(l - double(x[targets[r]]));
  }
  double sum = 0;
  int64_t c = 0;
  for (int64_t r = 0; r < n; ++r) {
    if (targets[r] < 0) continue;
    sum += double(row_loss[r]);
    ++c;
  }
  *loss = c ? T(sum / double(c)) : T(0);
  *count = int32_t(c);
}

void cross_entropy_forward(const Tensor& logits, const Tensor& targets, int64_t valid_vocab,
                           const Tensor& row_loss, const Tensor& lse, const Tensor& loss, const Tensor& count) {
  UM_DISPATCH_CPU(logits.dtype(), T,
                  forward_kernel<T>(logits.data_as<T>(), targets.data_as<int32_t>(), logits.dim(0), logits.dim(1),
                                    valid_vocab, row_loss.data_as<T>(), lse.data_as<T>(), loss.data_as<T>(),
                                    count.data_as<int32_t>()));
}

// dlogits may alias logits: every element is read before it is written, by the same iteration.
template <typename T>
static void backward_kernel(const T* logits, const int32_t* targets, const T* lse, int32_t count, T dloss,
                            int64_t n, int64_t vp, int64_t v, T* dlogits, bool accumulate) {
  T scale = count > 0 ? dloss / T(count) : T(0);
#pragma omp parallel for if (n * vp > (1 << 16))
  for (int64_t r = 0; r < n; ++r) {
    const T* x = logits + r * vp;
    T* d = dlogits + r * vp;
    int32_t t = targets[r];
    for (int64_t j = 0; j < vp; ++j) {
      T g = 0;
      if (t >= 0 && j < v) g = (std::exp(x[j] - lse[r]) - T(j == t ? 1 : 0)) * scale;
      d[j] = accumulate ? d[j] + g : g;
    }
  }
}

void cross_entropy_backward(const Tensor& logits, const Tensor& targets, int64_t valid_vocab, const Tensor& lse,
                            const Tensor& count, const Tensor& dloss, const Tensor& dlogits, bool accumulate) {
  check_dtype(dlogits, logits.dtype(), "cross_entropy backward: dlogits");
  UM_DISPATCH_CPU(logits.dtype(), T,
                  backward_kernel<T>(logits.data_as<T>(), targets.data_as<int32_t>(), lse.data_as<T>(),
                                     *count.data_as<int32_t>(), *dloss.data_as<T>(), logits.dim(0), logits.dim(1),
                                     valid_vocab, dlogits.data_as<T>(), accumulate));
}

}  // namespace um::cpu
