// CPU reference of the memory retrieval family (f32 and f64): the score GEMMs as plain loops with
// double accumulation, and the top-k selection with the same arithmetic, in the same order, as the
// CUDA kernels (cuda/memory_topk.cu), so that in f32 both rank the candidates from bit-identical values.
#include "ultramem/ops/memory_retrieval.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "src/cpu/dispatch.h"

// The ranking values are sums of separately rounded products (the GPU uses __fmul_rn/__fadd_rn): no FMA
// contraction here either, or near-ties could rank differently on the two devices.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace um::cpu {
namespace {

using ops::GridScore;
using ops::ScoreShape;
using ops::TopkArgs;

// ---- memory_scores ----------------------------------------------------------------------------

// One (h, s, p) block: rows of q at q + t*qw + qoff (K values) against keys kv [m, K] (m = n, or r*n
// when one query serves all ranks) -> out + t*ow + ooff.
template <typename T>
void scores_forward(const T* q, const T* keys, T* out, int64_t T_, const ScoreShape& s) {
  const int64_t H = s.heads, r = s.rank, qr = s.q_ranks, n = s.n_keys, K = s.kdim;
  const int64_t qw = H * 2 * qr * K, ow = H * 2 * r * n;
#pragma omp parallel for if (T_ * ow * K > (1 << 18))
  for (int64_t t = 0; t < T_; ++t)
    for (int64_t hs = 0; hs < 2 * H; ++hs)
      for (int64_t p = 0; p < r; ++p) {
        const T* qv = q + t * qw + (hs * qr + (qr == r ? p : 0)) * K;
        const T* kv = keys + (hs * r + p) * n * K;
        T* o = out + t * ow + (hs * r + p) * n;
        for (int64_t i = 0; i < n; ++i) {
          double acc = 0;
          for (int64_t k = 0; k < K; ++k) acc += double(qv[k]) * double(kv[i * K + k]);
          o[i] = T(acc);
        }
      }
}

// dq = dscores . keys, dkeys = dscores^T . q; zero score gradients (most of them: only picked rows
// receive one) are skipped.
template <typename T>
void scores_backward(const T* q, const T* keys, const T* ds, T* dq, bool acc_q, T* dk, bool acc_k, int64_t T_,
                     const ScoreShape& s) {
  const int64_t H = s.heads, r = s.rank, qr = s.q_ranks, n = s.n_keys, K = s.kdim;
  const int64_t qw = H * 2 * qr * K, ow = H * 2 * r * n;
  if (dq) {
#pragma omp parallel for if (T_ * ow * K > (1 << 18))
    for (int64_t t = 0; t < T_; ++t) {
      std::vector<double> acc(size_t(qw), 0.0);
      for (int64_t hs = 0; hs < 2 * H; ++hs)
        for (int64_t p = 0; p < r; ++p) {
          double* a = acc.data() + (hs * qr + (qr == r ? p : 0)) * K;
          const T* kv = keys + (hs * r + p) * n * K;
          const T* g = ds + t * ow + (hs * r + p) * n;
          for (int64_t i = 0; i < n; ++i) {
            if (g[i] == T(0)) continue;
            for (int64_t k = 0; k < K; ++k) a[k] += double(g[i]) * double(kv[i * K + k]);
          }
        }
      T* d = dq + t * qw;
      for (int64_t c = 0; c < qw; ++c) d[c] = T((acc_q ? double(d[c]) : 0.0) + acc[size_t(c)]);
    }
  }
  if (dk) {
    const int64_t key_rows = 2 * H * r * n;
#pragma omp parallel for if (T_ * ow * K > (1 << 18))
    for (int64_t row = 0; row < key_rows; ++row) {
      const int64_t hs = row / (r * n), p = (row / n) % r;
      const int64_t qoff = (hs * qr + (qr == r ? p : 0)) * K;
      std::vector<double> acc(size_t(K), 0.0);
      for (int64_t t = 0; t < T_; ++t) {
        const T g = ds[t * ow + row];  // row = (hs*r + p)*n + i: the score's offset within token t
        if (g == T(0)) continue;
        const T* qv = q + t * qw + qoff;
        for (int64_t k = 0; k < K; ++k) acc[size_t(k)] += double(g) * double(qv[k]);
      }
      T* d = dk + row * K;
      for (int64_t k = 0; k < K; ++k) d[k] = T((acc_k ? double(d[k]) : 0.0) + acc[size_t(k)]);
    }
  }
}

// ---- memory_topk --------------------------------------------------------------------------------

// Candidate order: larger value first (NaN ranks as -inf), then lower position. -0 == +0.
template <typename T>
T rank_value(T x) {
  return std::isnan(x) ? -std::numeric_limits<T>::infinity() : x;
}

// Positions of the k best of vals[0, len), best first.
template <typename T>
std::vector<int32_t> top_positions(const std::vector<T>& vals, int64_t k) {
  std::vector<int32_t> pos(vals.size());
  std::iota(pos.begin(), pos.end(), 0);
  std::partial_sort(pos.begin(), pos.begin() + k, pos.end(), [&](int32_t a, int32_t b) {
    const T va = rank_value(vals[size_t(a)]), vb = rank_value(vals[size_t(b)]);
    return va > vb || (va == vb && a < b);
  });
  pos.resize(size_t(k));
  return pos;
}

// sum_j w[j * ws] * x[j * xs], summed from j = 0 with each product rounded (the kernels' order).
template <typename T>
T dot_in_order(const T* w, int64_t ws, const T* x, int64_t xs, int64_t len) {
  T acc = w[0] * x[0];
  for (int64_t j = 1; j < len; ++j) acc = acc + w[j * ws] * x[j * xs];
  return acc;
}

struct TopkDims {
  int64_t T, H, r, n, k, h;
  bool tucker;
};

TopkDims topk_dims(const Tensor& scores, const Tensor& cores, const TopkArgs& args) {
  const bool tucker = args.grid == GridScore::tucker;
  return {scores.dim(0), scores.dim(1), scores.dim(3), scores.dim(4), args.knn, tucker ? cores.dim(0) : 1, tucker};
}

template <typename T>
void topk_forward(const T* scores, const T* u, const T* v, const T* cores, const TopkDims& d, int32_t* indices,
                  T* out_scores, int32_t* rows, int32_t* pair) {
  const int64_t H = d.H, r = d.r, n = d.n, k = d.k, hc = d.h;
#pragma omp parallel for if (d.T * H * n * r > (1 << 16))
  for (int64_t th = 0; th < d.T * H; ++th) {
    const int64_t h = th % H;
    const T* side[2] = {scores + th * 2 * r * n, scores + (th * 2 + 1) * r * n};  // [r][n] each
    // Pre-selection on u . scores (rows) and v . scores (columns); additive: the rank-1 score itself.
    std::vector<int32_t> sel[2];
    std::vector<T> pre(static_cast<size_t>(n));
    for (int s = 0; s < 2; ++s) {
      const T* w = s == 0 ? u : v;
      for (int64_t i = 0; i < n; ++i)
        pre[size_t(i)] = d.tucker ? dot_in_order(w + h * r, 1, side[s] + i, n, r) : side[s][i];
      sel[s] = top_positions(pre, k);
      for (int64_t a = 0; a < k; ++a) rows[(th * 2 + s) * k + a] = sel[s][size_t(a)];
    }
    // s1[p][a], s2[q][b]: the raw scores of the picked rows and columns.
    std::vector<T> sv[2];
    for (int s = 0; s < 2; ++s) {
      sv[s].resize(size_t(r * k));
      for (int64_t p = 0; p < r; ++p)
        for (int64_t a = 0; a < k; ++a) sv[s][size_t(p * k + a)] = side[s][p * n + sel[s][size_t(a)]];
    }
    // Ranking score S = s1^T (sum_m C_m) s2, through W[p][b] = sum_q Csum[p][q] s2[q][b].
    std::vector<T> grid(size_t(k * k)), W(size_t(r * k)), csum(size_t(r * r));
    const T* C = cores ? cores + h * r * r : nullptr;  // core m at C + m * H * r * r
    if (d.tucker) {
      for (int64_t e = 0; e < r * r; ++e) {
        T acc = C[e];
        for (int64_t m = 1; m < hc; ++m) acc = acc + C[m * H * r * r + e];
        csum[size_t(e)] = acc;
      }
      for (int64_t p = 0; p < r; ++p)
        for (int64_t b = 0; b < k; ++b)
          W[size_t(p * k + b)] = dot_in_order(&csum[size_t(p * r)], 1, &sv[1][size_t(b)], k, r);
    }
    for (int64_t a = 0; a < k; ++a)
      for (int64_t b = 0; b < k; ++b)
        grid[size_t(a * k + b)] =
            d.tucker ? dot_in_order(&sv[0][size_t(a)], k, &W[size_t(b)], k, r) : sv[0][size_t(a)] + sv[1][size_t(b)];
    std::vector<int32_t> best = top_positions(grid, k);
    for (int64_t q = 0; q < k; ++q) {
      const int64_t pos = best[size_t(q)], a = pos / k, b = pos % k, slot = th * k + q;
      indices[slot] = int32_t(sel[0][size_t(a)] * n + sel[1][size_t(b)]);
      pair[slot] = int32_t(pos);
      if (!d.tucker) {
        out_scores[slot] = grid[size_t(pos)];
        continue;
      }
      for (int64_t m = 0; m < hc; ++m) {  // S_m = sum_p s1[p] (sum_q C_m[p][q] s2[q])
        const T* Cm = C + m * H * r * r;
        T acc = 0;
        for (int64_t p = 0; p < r; ++p) {
          const T wm = dot_in_order(Cm + p * r, 1, &sv[1][size_t(b)], k, r);
          acc = p == 0 ? sv[0][size_t(a)] * wm : acc + sv[0][size_t(p * k + a)] * wm;
        }
        out_scores[slot * hc + m] = acc;
      }
    }
  }
}

[[noreturn]] void throw_bad_pick(const char* what, int64_t slot, int64_t value, int64_t limit) {
  throw Error(detail::concat("memory_topk backward: ", what, " at slot ", slot),
              detail::concat("a value in [0, ", limit, ") (as memory_topk_forward wrote it)"), std::to_string(value));
}

// The picked pair of a slot: (a, b) ranks in the pre-selection lists and the key rows (i, j) they name.
struct Pick {
  int64_t a, b, i, j;
};

Pick pick_of(const int32_t* rows, const int32_t* pair, int64_t th, int64_t q, const TopkDims& d) {
  const int64_t slot = th * d.k + q, pos = pair[slot];
  if (pos < 0 || pos >= d.k * d.k) throw_bad_pick("pair", slot, pos, d.k * d.k);
  Pick p{pos / d.k, pos % d.k, rows[th * 2 * d.k + pos / d.k], rows[(th * 2 + 1) * d.k + pos % d.k]};
  if (p.i < 0 || p.i >= d.n) throw_bad_pick("rows", slot, p.i, d.n);
  if (p.j < 0 || p.j >= d.n) throw_bad_pick("rows", slot, p.j, d.n);
  return p;
}

template <typename T>
void topk_backward(const T* scores, const T* cores, const int32_t* rows, const int32_t* pair, const T* dpick, T* ds,
                   bool acc_s, T* dc, bool acc_c, const TopkDims& d) {
  const int64_t H = d.H, r = d.r, n = d.n, k = d.k, hc = d.h;
  // Validated up front: an Error must not escape the OpenMP region below.
  for (int64_t th = 0; th < d.T * H; ++th)
    for (int64_t q = 0; q < k; ++q) pick_of(rows, pair, th, q, d);
  if (ds) {
    if (!acc_s) std::memset(ds, 0, size_t(d.T * H * 2 * r * n) * sizeof(T));
#pragma omp parallel for if (d.T * H * k * r * r > (1 << 16))
    for (int64_t th = 0; th < d.T * H; ++th) {
      const int64_t h = th % H;
      const T* side[2] = {scores + th * 2 * r * n, scores + (th * 2 + 1) * r * n};
      T* dside[2] = {ds + th * 2 * r * n, ds + (th * 2 + 1) * r * n};
      for (int64_t q = 0; q < k; ++q) {
        const Pick pk = pick_of(rows, pair, th, q, d);
        const T* g = dpick + (th * k + q) * hc;
        if (!d.tucker) {
          dside[0][pk.i] += g[0];
          dside[1][pk.j] += g[0];
          continue;
        }
        // d s1[p] = sum_m g_m sum_q C_m[p][q] s2[q];  d s2[q] = sum_m g_m sum_p s1[p] C_m[p][q].
        for (int64_t p = 0; p < r; ++p) {
          T c0 = 0, c1 = 0;
          for (int64_t m = 0; m < hc; ++m) {
            const T* Cm = cores + (m * H + h) * r * r;
            T w0 = 0, w1 = 0;
            for (int64_t x = 0; x < r; ++x) {
              w0 += Cm[p * r + x] * side[1][x * n + pk.j];
              w1 += side[0][x * n + pk.i] * Cm[x * r + p];
            }
            c0 += g[m] * w0;
            c1 += g[m] * w1;
          }
          dside[0][p * n + pk.i] += c0;
          dside[1][p * n + pk.j] += c1;
        }
      }
    }
  }
  if (dc) {
    // d C_m[p][q] = sum over tokens and picks of g_m s1[p] s2[q], in (token, head, pick) order.
    const int64_t E = hc * H * r * r;
    std::vector<double> acc(size_t(E), 0.0);
    for (int64_t th = 0; th < d.T * H; ++th) {
      const int64_t h = th % H;
      const T* side[2] = {scores + th * 2 * r * n, scores + (th * 2 + 1) * r * n};
      for (int64_t q = 0; q < k; ++q) {
        const Pick pk = pick_of(rows, pair, th, q, d);
        const T* g = dpick + (th * k + q) * hc;
        for (int64_t m = 0; m < hc; ++m)
          for (int64_t p = 0; p < r; ++p)
            for (int64_t x = 0; x < r; ++x)
              acc[size_t(((m * H + h) * r + p) * r + x)] +=
                  double(g[m]) * double(side[0][p * n + pk.i]) * double(side[1][x * n + pk.j]);
      }
    }
    for (int64_t e = 0; e < E; ++e) dc[e] = T((acc_c ? double(dc[e]) : 0.0) + acc[size_t(e)]);
  }
}

template <typename T>
T* ptr_or_null(const Tensor& t) {
  return t.defined() ? t.data_as<T>() : nullptr;
}

}  // namespace

void memory_scores_forward(const Tensor& q, const Tensor& keys, const ops::ScoreShape& s, const Tensor& scores) {
  UM_DISPATCH_CPU(q.dtype(), T,
                  scores_forward<T>(q.data_as<T>(), keys.data_as<T>(), scores.data_as<T>(), scores.dim(0), s));
}

void memory_scores_backward(const Tensor& q, const Tensor& keys, const ops::ScoreShape& s, const Tensor& dscores,
                            const Tensor& dq, bool acc_q, const Tensor& dkeys, bool acc_k) {
  UM_DISPATCH_CPU(q.dtype(), T,
                  scores_backward<T>(q.data_as<T>(), keys.data_as<T>(), dscores.data_as<T>(), ptr_or_null<T>(dq), acc_q,
                                     ptr_or_null<T>(dkeys), acc_k, dscores.dim(0), s));
}

void memory_topk_forward(const Tensor& scores, const Tensor& u, const Tensor& v, const Tensor& cores,
                         const ops::TopkArgs& args, const ops::Retrieval& out, const Tensor& pair) {
  const TopkDims d = topk_dims(scores, cores, args);
  UM_DISPATCH_CPU(scores.dtype(), T,
                  topk_forward<T>(scores.data_as<T>(), ptr_or_null<T>(u), ptr_or_null<T>(v),
                                  d.tucker ? cores.data_as<T>() : nullptr, d, out.indices.data_as<int32_t>(),
                                  out.scores.data_as<T>(), out.rows.data_as<int32_t>(), pair.data_as<int32_t>()));
}

void memory_topk_backward(const Tensor& scores, const Tensor& cores, const ops::TopkArgs& args, const Tensor& rows,
                          const Tensor& pair, const Tensor& dpick, const Tensor& dscores, bool acc_s,
                          const Tensor& dcores, bool acc_c) {
  const TopkDims d = topk_dims(scores, cores, args);
  UM_DISPATCH_CPU(scores.dtype(), T,
                  topk_backward<T>(scores.data_as<T>(), d.tucker ? cores.data_as<T>() : nullptr,
                                   rows.data_as<int32_t>(), pair.data_as<int32_t>(), dpick.data_as<T>(),
                                   ptr_or_null<T>(dscores), acc_s, ptr_or_null<T>(dcores), acc_c, d));
}

}  // namespace um::cpu
