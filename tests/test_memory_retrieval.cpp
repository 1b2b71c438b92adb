// memory_scores (q . keys per head, side, rank) and memory_topk (pre-selection, grid, final top-k):
// values against naive formulas, tie-breaking, NaN, errors, float64 gradchecks, CUDA vs CPU.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "testing.h"
#include "ultramem/ops/memory_retrieval.h"

using namespace um;
using namespace um::testing;
using ops::GridScore;

namespace {


std::vector<double> plus(std::vector<double> a, const std::vector<double>& b) {
  for (size_t i = 0; i < a.size(); ++i) a[i] += b[i];
  return a;
}

// scores[t, h, s, p, i] = q[t, h, s, qp, :] . keys[h, s, p, i, :], written out index by index.
std::vector<double> naive_scores(const std::vector<double>& q, const std::vector<double>& keys, int64_t T,
                                 const ops::ScoreShape& s) {
  const int64_t H = s.heads, r = s.rank, qr = s.q_ranks, n = s.n_keys, K = s.kdim;
  std::vector<double> out;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t sd = 0; sd < 2; ++sd)
        for (int64_t p = 0; p < r; ++p)
          for (int64_t i = 0; i < n; ++i) {
            const int64_t qp = qr == r ? p : 0;
            double acc = 0;
            for (int64_t k = 0; k < K; ++k)
              acc += q[size_t((((t * H + h) * 2 + sd) * qr + qp) * K + k)] *
                     keys[size_t(((((h * 2 + sd) * r + p) * n) + i) * K + k)];
            out.push_back(acc);
          }
  return out;
}

struct Dims {
  int64_t T, H, r, n, h, k;
};

// Positions of the k best values, best first: NaN as -inf, equal values by lower position (a stable
// sort on the value alone, an independent way of stating the rule).
std::vector<int64_t> naive_best(const std::vector<double>& v, int64_t k) {
  auto key = [](double x) { return std::isnan(x) ? -INFINITY : x; };
  std::vector<int64_t> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return key(v[size_t(a)]) > key(v[size_t(b)]); });
  idx.resize(size_t(k));
  return idx;
}

// The smallest gap between consecutive values among the k + 1 best (how far the selection and its
// order are from changing).
double top_gap(const std::vector<double>& v, int64_t k) {
  std::vector<double> s = v;
  std::sort(s.begin(), s.end(), std::greater<>());
  double gap = INFINITY;
  for (int64_t j = 0; j < std::min<int64_t>(k, int64_t(s.size()) - 1); ++j)
    gap = std::min(gap, s[size_t(j)] - s[size_t(j + 1)]);
  return gap;
}

struct NaiveTopk {
  std::vector<int64_t> indices, rows, pair;
  std::vector<double> scores;
  double gap = INFINITY;  // the smallest top_gap over every pre-selection and grid
};

// The definition: row score u . s1 (additive: s1), best rows and columns, grid S = sum_m s1^T C_m s2
// (additive: s1 + s2), the k best cells, per-core S_m of each.
NaiveTopk naive_topk(const std::vector<double>& sc, const std::vector<double>& u, const std::vector<double>& v,
                     const std::vector<double>& C, const Dims& d, bool tucker) {
  auto at = [&](int64_t t, int64_t h, int64_t s, int64_t p, int64_t i) {
    return sc[size_t(((((t * d.H + h) * 2 + s) * d.r + p) * d.n) + i)];
  };
  auto core = [&](int64_t m, int64_t h, int64_t p, int64_t q) {
    return C[size_t(((m * d.H + h) * d.r + p) * d.r + q)];
  };
  NaiveTopk out;
  for (int64_t t = 0; t < d.T; ++t)
    for (int64_t h = 0; h < d.H; ++h) {
      std::vector<int64_t> sel[2];
      for (int64_t s = 0; s < 2; ++s) {
        std::vector<double> pre(size_t(d.n), 0.0);
        for (int64_t i = 0; i < d.n; ++i) {
          if (!tucker) pre[size_t(i)] = at(t, h, s, 0, i);
          for (int64_t p = 0; tucker && p < d.r; ++p)
            pre[size_t(i)] += (s == 0 ? u : v)[size_t(h * d.r + p)] * at(t, h, s, p, i);
        }
        sel[s] = naive_best(pre, d.k);
        out.gap = std::min(out.gap, top_gap(pre, d.k));
        out.rows.insert(out.rows.end(), sel[s].begin(), sel[s].end());
      }
      auto S_m = [&](int64_t m, int64_t a, int64_t b) {
        const int64_t i = sel[0][size_t(a)], j = sel[1][size_t(b)];
        if (!tucker) return at(t, h, 0, 0, i) + at(t, h, 1, 0, j);
        double acc = 0;
        for (int64_t p = 0; p < d.r; ++p)
          for (int64_t q = 0; q < d.r; ++q) acc += at(t, h, 0, p, i) * core(m, h, p, q) * at(t, h, 1, q, j);
        return acc;
      };
      std::vector<double> grid(size_t(d.k * d.k), 0.0);
      for (int64_t a = 0; a < d.k; ++a)
        for (int64_t b = 0; b < d.k; ++b)
          for (int64_t m = 0; m < d.h; ++m) grid[size_t(a * d.k + b)] += S_m(m, a, b);
      out.gap = std::min(out.gap, top_gap(grid, d.k));
      for (int64_t pos : naive_best(grid, d.k)) {
        const int64_t a = pos / d.k, b = pos % d.k;
        out.indices.push_back(sel[0][size_t(a)] * d.n + sel[1][size_t(b)]);
        out.pair.push_back(pos);
        for (int64_t m = 0; m < d.h; ++m) out.scores.push_back(S_m(m, a, b));
      }
    }
  return out;
}

struct TopkInputs {
  Tensor scores, u, v, cores;  // u, v, cores undefined for additive
};

TopkInputs random_topk_inputs(const Dims& d, bool tucker, DType dt, uint64_t seed) {
  TopkInputs in;
  in.scores = randn({d.T, d.H, 2, d.r, d.n}, dt, Device::cpu(), seed);
  if (tucker) {
    in.u = uniform({d.H, d.r}, dt, Device::cpu(), seed + 1, 0.2, 1.0);
    in.v = uniform({d.H, d.r}, dt, Device::cpu(), seed + 2, 0.2, 1.0);
    in.cores = uniform({d.h, d.H, d.r, d.r}, dt, Device::cpu(), seed + 3, 0.0, 1.0);
  }
  return in;
}

std::vector<double> doubles_or_empty(const Tensor& t) { return t.defined() ? t.to_doubles() : std::vector<double>(); }

NaiveTopk naive_of(const TopkInputs& in, const Dims& d, bool tucker) {
  return naive_topk(in.scores.to_doubles(), doubles_or_empty(in.u), doubles_or_empty(in.v), doubles_or_empty(in.cores),
                    d, tucker);
}

ops::Retrieval run_topk(const TopkInputs& in, int64_t knn, bool tucker) {
  return ops::memory_topk(in.scores, in.u, in.v, in.cores, {knn, tucker ? GridScore::tucker : GridScore::additive});
}

void check_against_naive(const ops::Retrieval& got, const NaiveTopk& want, double tol) {
  CHECK(got.indices.to_ints() == want.indices);
  CHECK(got.rows.to_ints() == want.rows);
  CHECK(rel_error(got.scores.to_doubles(), want.scores) <= tol);
}

}  // namespace

TEST_CASE("memory_scores: q . keys for every head, side and rank", "[memory]") {
  PoisonArena poison(Device::cpu());
  for (DType dt : {DType::f64, DType::f32})
    for (int64_t qr : {1, 2}) {
      ops::ScoreShape s{2, 5, 2, qr, 4};
      const int64_t T = 3;
      Tensor q = randn({T, 2 * 2 * qr * 4}, dt, Device::cpu(), 10 + uint64_t(qr));
      Tensor keys = randn({2 * 2 * 2 * 5, 4}, dt, Device::cpu(), 20 + uint64_t(qr));
      Tensor scores = ops::memory_scores(q, keys, s);
      INFO("dtype " << dtype_name(dt) << " q_ranks " << qr);
      REQUIRE(scores.shape() == Shape({T, 2, 2, 2, 5}));
      CHECK(scores.dtype() == dt);
      CHECK(rel_error(scores.to_doubles(), naive_scores(q.to_doubles(), keys.to_doubles(), T, s)) <
            (dt == DType::f64 ? 1e-14 : kTolF32));
    }
}

TEST_CASE("memory_scores: wrong shapes and dtypes are Errors naming the tensor", "[memory]") {
  ops::ScoreShape s{2, 5, 2, 2, 4};
  Tensor q = randn({3, 32}, DType::f32, Device::cpu(), 1), keys = randn({40, 4}, DType::f32, Device::cpu(), 2);
  CHECK_THROWS_WITH(ops::memory_scores(randn({3, 31}, DType::f32, Device::cpu(), 3), keys, s),
                    Catch::Contains("memory_scores: q") && Catch::Contains("[T, 32]"));
  CHECK_THROWS_WITH(ops::memory_scores(q, randn({39, 4}, DType::f32, Device::cpu(), 4), s),
                    Catch::Contains("memory_scores: keys") && Catch::Contains("[40, 4]"));
  CHECK_THROWS_WITH(ops::memory_scores(q, convert(keys, DType::f64, Device::cpu()), s), Catch::Contains("keys"));
  CHECK_THROWS_WITH(ops::memory_scores(q, keys, ops::ScoreShape{2, 5, 2, 3, 4}), Catch::Contains("q_ranks"));
}

TEST_CASE("memory_scores: float64 gradients of q and keys", "[memory]") {
  for (int64_t qr : {1, 3}) {
    ops::ScoreShape s{2, 4, 3, qr, 3};
    Tensor q = randn({2, 2 * 2 * qr * 3}, DType::f64, Device::cpu(), 30 + uint64_t(qr));
    Tensor keys = randn({2 * 2 * 3 * 4, 3}, DType::f64, Device::cpu(), 40 + uint64_t(qr));
    q.set_requires_grad(true);
    keys.set_requires_grad(true);
    INFO("q_ranks " << qr);
    CHECK(gradcheck([s](const std::vector<Tensor>& in) { return ops::memory_scores(in[0], in[1], s); }, {q, keys}) <
          kTolGradcheck);
  }
}

TEST_CASE("memory_scores backward: accumulate adds, either gradient may be skipped", "[memory]") {
  PoisonArena poison(Device::cpu());
  ops::ScoreShape s{1, 6, 2, 2, 5};
  Tensor q = randn({4, 20}, DType::f64, Device::cpu(), 50), keys = randn({24, 5}, DType::f64, Device::cpu(), 51);
  Tensor ds = randn({4, 1, 2, 2, 6}, DType::f64, Device::cpu(), 52);
  Tensor dq = alloc_activation(q.shape(), DType::f64, Device::cpu());
  Tensor dk = alloc_activation(keys.shape(), DType::f64, Device::cpu());
  ops::memory_scores_backward(q, keys, s, ds, dq, false, dk, false);
  std::vector<double> dq0 = dq.to_doubles(), dk0 = dk.to_doubles();
  Tensor pq = randn(q.shape(), DType::f64, Device::cpu(), 53), pk = randn(keys.shape(), DType::f64, Device::cpu(), 54);
  dq.copy_from(pq);
  dk.copy_from(pk);
  ops::memory_scores_backward(q, keys, s, ds, dq, true, Tensor(), false);
  CHECK(rel_error(dq.to_doubles(), plus(pq.to_doubles(), dq0)) < 1e-14);
  CHECK(dk.to_doubles() == pk.to_doubles());
  ops::memory_scores_backward(q, keys, s, ds, Tensor(), false, dk, true);
  CHECK(rel_error(dk.to_doubles(), plus(pk.to_doubles(), dk0)) < 1e-14);
}

TEST_CASE("memory_topk: additive and tucker grids against the naive formula", "[memory]") {
  PoisonArena poison(Device::cpu());
  struct Case {
    Dims d;
    bool tucker;
  };
  for (const Case& c :
       {Case{{4, 2, 1, 11, 1, 4}, false}, Case{{3, 1, 1, 6, 1, 6}, false}, Case{{4, 2, 2, 13, 2, 5}, true},
        Case{{2, 3, 3, 9, 3, 9}, true}, Case{{3, 1, 1, 8, 1, 3}, true}})
    for (DType dt : {DType::f64, DType::f32}) {
      INFO("T " << c.d.T << " H " << c.d.H << " r " << c.d.r << " n " << c.d.n << " h " << c.d.h << " knn " << c.d.k
                << (c.tucker ? " tucker " : " additive ") << dtype_name(dt));
      TopkInputs in = random_topk_inputs(c.d, c.tucker, dt, uint64_t(60 + c.d.n + c.d.k));
      NaiveTopk want = naive_of(in, c.d, c.tucker);
      REQUIRE(want.gap > 1e-5);  // random data: no near-ties that rounding could flip
      ops::Retrieval got = run_topk(in, c.d.k, c.tucker);
      REQUIRE(got.indices.shape() == Shape({c.d.T, c.d.H * c.d.k}));
      REQUIRE(got.scores.shape() == Shape({c.d.T, c.d.H * c.d.k, c.d.h}));
      REQUIRE(got.rows.shape() == Shape({c.d.T, c.d.H, 2, c.d.k}));
      check_against_naive(got, want, dt == DType::f64 ? 1e-13 : kTolF32);
    }
}

TEST_CASE("memory_topk: equal scores go to the lower index, rows and grid alike", "[memory]") {
  PoisonArena poison(Device::cpu());
  for (bool tucker : {false, true})
    for (DType dt : {DType::f64, DType::f32}) {
      // Small integers: every sum and product is exact, so ties are exact in every dtype.
      Dims d{3, 2, tucker ? int64_t(2) : int64_t(1), 12, tucker ? int64_t(2) : int64_t(1), 5};
      TopkInputs in;
      in.scores = randint({d.T, d.H, 2, d.r, d.n}, 3, dt, Device::cpu(), 70);
      if (tucker) {
        in.u = randint({d.H, d.r}, 2, dt, Device::cpu(), 71);
        in.v = Tensor::from_doubles({1, 1, 1, 0}, {d.H, d.r}, dt);
        in.cores = randint({d.h, d.H, d.r, d.r}, 3, dt, Device::cpu(), 72);
      }
      INFO((tucker ? "tucker " : "additive ") << dtype_name(dt));
      check_against_naive(run_topk(in, d.k, tucker), naive_of(in, d, tucker), 0.0);
    }
  // A hand-made case: rows 2 and 5 tie (3.0), columns 0, 1 and 4 tie (1.0).
  std::vector<double> s = {0, 1, 3, 0, 2, 3, /* columns */ 1, 1, 0, -1, 1, 0};
  Tensor scores = Tensor::from_doubles(s, {1, 1, 2, 1, 6}, DType::f64);
  ops::Retrieval got = ops::memory_topk(scores, Tensor(), Tensor(), Tensor(), {3, GridScore::additive});
  CHECK(got.rows.to_ints() == std::vector<int64_t>{2, 5, 4, 0, 1, 4});
  // Grid values: rows (2, 5, 4) x cols (0, 1, 4) = 4 4 4 / 4 4 4 / 3 3 3: the first three cells win.
  CHECK(got.indices.to_ints() == std::vector<int64_t>{2 * 6 + 0, 2 * 6 + 1, 2 * 6 + 4});
}

TEST_CASE("memory_topk: NaN scores rank last and are never out of bounds", "[memory]") {
  PoisonArena poison(Device::cpu());
  for (int64_t knn : {3, 8}) {  // 8 == n: NaN rows must be picked, last
    Dims d{2, 1, 1, 8, 1, knn};
    TopkInputs in = random_topk_inputs(d, false, DType::f32, 80);
    std::vector<double> s = in.scores.to_doubles();
    s[1] = s[5] = s[8 + 2] = NAN;
    in.scores = Tensor::from_doubles(s, in.scores.shape(), DType::f32);
    NaiveTopk want = naive_of(in, d, false);
    ops::Retrieval got = run_topk(in, knn, false);
    INFO("knn " << knn);
    CHECK(got.indices.to_ints() == want.indices);
    CHECK(got.rows.to_ints() == want.rows);
    for (int64_t i : got.indices.to_ints()) CHECK((i >= 0 && i < 64));
  }
}

TEST_CASE("memory_topk: argument errors name the tensor and the expectation", "[memory]") {
  Dims d{2, 2, 2, 7, 2, 3};
  TopkInputs in = random_topk_inputs(d, true, DType::f32, 90);
  auto run = [&](const TopkInputs& x, int64_t knn, GridScore g) {
    ops::memory_topk(x.scores, x.u, x.v, x.cores, {knn, g});
  };
  CHECK_THROWS_WITH(run(in, 8, GridScore::tucker), Catch::Contains("knn") && Catch::Contains("n = 7"));
  CHECK_THROWS_WITH(run(in, 3, GridScore::additive), Catch::Contains("scores") && Catch::Contains("rank 1"));
  TopkInputs bad = in;
  bad.cores = randn({2, 2, 2, 3}, DType::f32, Device::cpu(), 91);
  CHECK_THROWS_WITH(run(bad, 3, GridScore::tucker),
                    Catch::Contains("memory_topk: cores") && Catch::Contains("[h, 2, 2, 2]"));
  bad = in;
  bad.u = Tensor();
  CHECK_THROWS_WITH(run(bad, 3, GridScore::tucker), Catch::Contains("memory_topk: u"));
  TopkInputs big = random_topk_inputs(Dims{1, 1, 1, 70, 1, 65}, false, DType::f32, 92);
  CHECK_THROWS_WITH(run(big, 65, GridScore::additive), Catch::Contains("64"));
}

TEST_CASE("memory_topk: float64 gradients of scores and cores", "[memory]") {
  for (bool tucker : {false, true}) {
    Dims d{2, 2, tucker ? int64_t(2) : int64_t(1), 9, tucker ? int64_t(2) : int64_t(1), 3};
    TopkInputs in = random_topk_inputs(d, tucker, DType::f64, 100);
    // A finite-difference step (1e-6) must not change any selection or its order.
    REQUIRE(naive_of(in, d, tucker).gap > 1e-3);
    in.scores.set_requires_grad(true);
    std::vector<Tensor> inputs = {in.scores};
    if (tucker) {
      in.cores.set_requires_grad(true);
      inputs.push_back(in.cores);
    }
    Tensor u = in.u, v = in.v;
    INFO((tucker ? "tucker" : "additive"));
    CHECK(gradcheck(
              [&](const std::vector<Tensor>& x) {
                return ops::memory_topk(x[0], u, v, tucker ? x[1] : Tensor(),
                                        {d.k, tucker ? GridScore::tucker : GridScore::additive})
                    .scores;
              },
              inputs) < kTolGradcheck);
  }
}

TEST_CASE("memory retrieval: float64 gradient of q, keys and cores through scores and top-k", "[memory]") {
  ops::ScoreShape s{2, 7, 2, 2, 3};
  Tensor q = randn({3, 2 * 2 * 2 * 3}, DType::f64, Device::cpu(), 110);
  Tensor keys = randn({2 * 2 * 2 * 7, 3}, DType::f64, Device::cpu(), 111);
  Tensor u = uniform({2, 2}, DType::f64, Device::cpu(), 112, 0.2, 1.0);
  Tensor v = uniform({2, 2}, DType::f64, Device::cpu(), 113, 0.2, 1.0);
  Tensor cores = uniform({2, 2, 2, 2}, DType::f64, Device::cpu(), 114, 0.0, 1.0);
  Dims d{3, 2, 2, 7, 2, 3};
  REQUIRE(naive_topk(ops::memory_scores(q, keys, s).to_doubles(), u.to_doubles(), v.to_doubles(), cores.to_doubles(), d,
                     true)
              .gap > 1e-3);
  for (const Tensor* t : {&q, &keys, &cores}) t->set_requires_grad(true);
  CHECK(gradcheck(
            [&](const std::vector<Tensor>& x) {
              return ops::memory_topk(ops::memory_scores(x[0], x[1], s), u, v, x[2], {3, GridScore::tucker}).scores;
            },
            {q, keys, cores}) < kTolGradcheck);
}

TEST_CASE("memory_topk backward: a dense score gradient, zero off the picks; accumulate adds", "[memory]") {
  PoisonArena poison(Device::cpu());
  Dims d{3, 2, 2, 10, 2, 4};
  TopkInputs in = random_topk_inputs(d, true, DType::f64, 120);
  Tensor pair = alloc_activation({d.T, d.H * d.k}, DType::i32, Device::cpu());
  ops::Retrieval out;
  out.indices = alloc_activation({d.T, d.H * d.k}, DType::i32, Device::cpu());
  out.scores = alloc_activation({d.T, d.H * d.k, d.h}, DType::f64, Device::cpu());
  out.rows = alloc_activation({d.T, d.H, 2, d.k}, DType::i32, Device::cpu());
  ops::TopkArgs args{d.k, GridScore::tucker};
  ops::memory_topk_forward(in.scores, in.u, in.v, in.cores, args, out, pair);
  Tensor dpick = randn(out.scores.shape(), DType::f64, Device::cpu(), 121);
  Tensor ds = alloc_activation(in.scores.shape(), DType::f64, Device::cpu());
  Tensor dc = alloc_activation(in.cores.shape(), DType::f64, Device::cpu());
  ops::memory_topk_backward(in.scores, in.cores, args, out.rows, pair, dpick, ds, false, dc, false);
  // Nonzero only at (t, h, s, :, picked row) entries.
  std::vector<int64_t> rows = out.rows.to_ints();
  std::vector<double> g = ds.to_doubles();
  for (int64_t t = 0; t < d.T; ++t)
    for (int64_t h = 0; h < d.H; ++h)
      for (int64_t s = 0; s < 2; ++s)
        for (int64_t i = 0; i < d.n; ++i) {
          const auto* sel = &rows[size_t(((t * d.H + h) * 2 + s) * d.k)];
          if (std::find(sel, sel + d.k, i) != sel + d.k) continue;
          for (int64_t p = 0; p < d.r; ++p) CHECK(g[size_t(((((t * d.H + h) * 2 + s) * d.r + p) * d.n) + i)] == 0.0);
        }
  Tensor ps = randn(ds.shape(), DType::f64, Device::cpu(), 122), pc = randn(dc.shape(), DType::f64, Device::cpu(), 123);
  Tensor ds2 = alloc_activation(ds.shape(), DType::f64, Device::cpu()),
         dc2 = alloc_activation(dc.shape(), DType::f64, Device::cpu());
  ds2.copy_from(ps);
  dc2.copy_from(pc);
  ops::memory_topk_backward(in.scores, in.cores, args, out.rows, pair, dpick, ds2, true, dc2, true);
  CHECK(rel_error(ds2.to_doubles(), plus(ps.to_doubles(), g)) < 1e-14);
  CHECK(rel_error(dc2.to_doubles(), plus(pc.to_doubles(), dc.to_doubles())) < 1e-14);
}

// ---- CUDA vs CPU ----------------------------------------------------------------------------------

static void compare_scores_on_gpu(int64_t T, const ops::ScoreShape& s, DType dt) {
  const Device gpu = Device::cuda(), cpu = Device::cpu();
  const double tol = dt == DType::f32 ? kTolF32 : kTolBF16;
  const uint64_t seed = uint64_t(T + s.n_keys + s.q_ranks);
  const int64_t qw = s.heads * 2 * s.q_ranks * s.kdim, rows = s.heads * 2 * s.rank * s.n_keys;
  Tensor q = rounded(randn({T, qw}, DType::f32, cpu, seed), dt),
         keys = rounded(randn({rows, s.kdim}, DType::f32, cpu, seed + 1), dt);
  // A sparse score gradient, as memory_topk writes it.
  std::vector<double> dsv = randn({T, s.heads, 2, s.rank, s.n_keys}, DType::f64, cpu, seed + 2).to_doubles();
  for (size_t i = 0; i < dsv.size(); ++i)
    if (i % 7 != 3) dsv[i] = 0;
  Tensor ds = Tensor::from_doubles(dsv, {T, s.heads, 2, s.rank, s.n_keys}, DType::f32);
  Tensor q64 = convert(q, DType::f64, cpu), k64 = convert(keys, DType::f64, cpu);
  Tensor ref = ops::memory_scores(q64, k64, s);
  Tensor rdq = alloc_activation(q.shape(), DType::f64, cpu), rdk = alloc_activation(keys.shape(), DType::f64, cpu);
  ops::memory_scores_backward(q64, k64, s, convert(ds, DType::f64, cpu), rdq, false, rdk, false);

  Tensor gq = convert(q, dt, gpu), gk = convert(keys, dt, gpu), gds = ds.to(gpu);
  Tensor out = ops::memory_scores(gq, gk, s);
  INFO("T " << T << " H " << s.heads << " r " << s.rank << " qr " << s.q_ranks << " n " << s.n_keys << " K " << s.kdim
            << " " << dtype_name(dt));
  REQUIRE(out.dtype() == DType::f32);
  CHECK(rel_error(out.to_doubles(), ref.to_doubles()) < tol);
  Tensor dq = alloc_activation(q.shape(), dt, gpu), dk = alloc_activation(keys.shape(), DType::f32, gpu);
  ops::memory_scores_backward(gq, gk, s, gds, dq, false, dk, false);
  CHECK(rel_error(dq.to_doubles(), rdq.to_doubles()) < tol);
  CHECK(rel_error(dk.to_doubles(), rdk.to_doubles()) < tol);
  Tensor pq = rounded(randn(q.shape(), DType::f32, cpu, seed + 3), dt),
         pk = randn(keys.shape(), DType::f32, cpu, seed + 4);
  dq.copy_from(convert(pq, dt, gpu));
  dk.copy_from(pk.to(gpu));
  ops::memory_scores_backward(gq, gk, s, gds, dq, true, dk, true);
  CHECK(rel_error(dq.to_doubles(), plus(pq.to_doubles(), rdq.to_doubles())) < tol);
  CHECK(rel_error(dk.to_doubles(), plus(pk.to_doubles(), rdk.to_doubles())) < tol);
  if (dt == DType::bf16) {  // keys as an activation: its gradient in bf16
    Tensor dk16 = alloc_activation(keys.shape(), DType::bf16, gpu);
    ops::memory_scores_backward(gq, gk, s, gds, Tensor(), false, dk16, false);
    CHECK(rel_error(dk16.to_doubles(), rdk.to_doubles()) < tol);
  }
}

TEST_CASE("memory_scores CUDA matches CPU", "[gpu][memory]") {
  UM_REQUIRE_GPU();
  PoisonArena poison(Device::cuda());
  for (DType dt : {DType::f32, DType::bf16}) {
    compare_scores_on_gpu(37, {2, 33, 2, 1, 24}, dt);
    compare_scores_on_gpu(37, {2, 33, 2, 2, 24}, dt);
    compare_scores_on_gpu(5, {3, 17, 3, 3, 7}, dt);
    compare_scores_on_gpu(130, {1, 255, 1, 1, 64}, dt);
    arena_for(Device::cuda()).reset();
  }
}

// Data patterns for the top-k comparison.
enum class Pattern { random, ties, nan, lane0 };

static TopkInputs topk_inputs_for(const Dims& d, bool tucker, Pattern pat, uint64_t seed) {
  TopkInputs in = random_topk_inputs(d, tucker, DType::f32, seed);
  std::vector<double> s = in.scores.to_doubles();
  for (size_t x = 0; x < s.size(); ++x) {
    const int64_t i = int64_t(x) % d.n;
    if (pat == Pattern::ties) s[x] = std::floor(s[x] * 2);  // a handful of integers
    if (pat == Pattern::nan && x % 11 == 4) s[x] = NAN;
    if (pat == Pattern::lane0) s[x] = i % 32 == 0 ? 100.0 - double(i) : s[x];  // lane 0 of a warp holds the best
  }
  in.scores = Tensor::from_doubles(s, in.scores.shape(), DType::f32);
  if (pat == Pattern::ties && tucker) {  // exact products: integer weights and cores
    in.u = randint({d.H, d.r}, 3, DType::f32, Device::cpu(), seed + 5);
    in.v = randint({d.H, d.r}, 3, DType::f32, Device::cpu(), seed + 6);
    in.cores = randint({d.h, d.H, d.r, d.r}, 3, DType::f32, Device::cpu(), seed + 7);
  }
  return in;
}

static void compare_topk_on_gpu(const Dims& d, bool tucker, Pattern pat, DType core_dt) {
  const Device gpu = Device::cuda(), cpu = Device::cpu();
  const uint64_t seed = uint64_t(d.T * 7 + d.n + d.k + int(pat));
  TopkInputs in = topk_inputs_for(d, tucker, pat, seed);
  if (tucker) in.cores = rounded(in.cores, core_dt);
  ops::TopkArgs args{d.k, tucker ? GridScore::tucker : GridScore::additive};
  ops::Retrieval ref = ops::memory_topk(in.scores, in.u, in.v, in.cores, args);  // CPU, f32: the same arithmetic
  TopkInputs gin{in.scores.to(gpu), tucker ? in.u.to(gpu) : Tensor(), tucker ? in.v.to(gpu) : Tensor(),
                 tucker ? convert(in.cores, core_dt, gpu) : Tensor()};
  ops::Retrieval got = ops::memory_topk(gin.scores, gin.u, gin.v, gin.cores, args);
  INFO("T " << d.T << " H " << d.H << " r " << d.r << " n " << d.n << " h " << d.h << " knn " << d.k
            << (tucker ? " tucker" : " additive") << " pattern " << int(pat) << " cores " << dtype_name(core_dt));
  CHECK(got.rows.to_ints() == ref.rows.to_ints());
  CHECK(got.indices.to_ints() == ref.indices.to_ints());
  if (pat != Pattern::nan) CHECK(rel_error(got.scores, ref.scores) < kTolF32);
  for (int64_t i : got.indices.to_ints()) REQUIRE((i >= 0 && i < d.n * d.n));
  if (pat == Pattern::nan) return;

  // Backward, through the saved pair positions (recomputed here on each device).
  Tensor pair_ref = alloc_activation({d.T, d.H * d.k}, DType::i32, cpu),
         pair = alloc_activation({d.T, d.H * d.k}, DType::i32, gpu);
  ops::memory_topk_forward(in.scores, in.u, in.v, in.cores, args, ref, pair_ref);
  ops::memory_topk_forward(gin.scores, gin.u, gin.v, gin.cores, args, got, pair);
  CHECK(pair.to_ints() == pair_ref.to_ints());
  Tensor dpick = randn(ref.scores.shape(), DType::f32, cpu, seed + 8);
  Tensor rds = alloc_activation(in.scores.shape(), DType::f32, cpu);
  Tensor rdc = tucker ? alloc_activation(in.cores.shape(), DType::f32, cpu) : Tensor();
  ops::memory_topk_backward(in.scores, in.cores, args, ref.rows, pair_ref, dpick, rds, false, rdc, false);
  Tensor ds = alloc_activation(in.scores.shape(), DType::f32, gpu);
  Tensor dc = tucker ? alloc_activation(in.cores.shape(), DType::f32, gpu) : Tensor();
  Tensor gdpick = dpick.to(gpu);
  ops::memory_topk_backward(gin.scores, gin.cores, args, got.rows, pair, gdpick, ds, false, dc, false);
  std::vector<double> ds0 = ds.to_doubles();
  CHECK(rel_error(ds0, rds.to_doubles()) < kTolF32);
  if (tucker) CHECK(rel_error(dc.to_doubles(), rdc.to_doubles()) < kTolF32);
  std::vector<double> dc0 = tucker ? dc.to_doubles() : std::vector<double>();
  ops::memory_topk_backward(gin.scores, gin.cores, args, got.rows, pair, gdpick, ds, false, dc, false);
  CHECK(ds.to_doubles() == ds0);  // deterministic
  if (tucker) CHECK(dc.to_doubles() == dc0);
  Tensor ps = randn(ds.shape(), DType::f32, cpu, seed + 9);
  ds.copy_from(ps.to(gpu));
  Tensor pc = tucker ? randn(dc.shape(), DType::f32, cpu, seed + 10) : Tensor();
  if (tucker) dc.copy_from(pc.to(gpu));
  ops::memory_topk_backward(gin.scores, gin.cores, args, got.rows, pair, gdpick, ds, true, dc, true);
  CHECK(rel_error(ds.to_doubles(), plus(ps.to_doubles(), rds.to_doubles())) < kTolF32);
  if (tucker) CHECK(rel_error(dc.to_doubles(), plus(pc.to_doubles(), rdc.to_doubles())) < kTolF32);
}

TEST_CASE("memory_topk CUDA matches CPU", "[gpu][memory]") {
  UM_REQUIRE_GPU();
  PoisonArena poison(Device::cuda());
  for (Pattern pat : {Pattern::random, Pattern::ties, Pattern::nan, Pattern::lane0}) {
    compare_topk_on_gpu({29, 2, 1, 37, 1, 5}, false, pat, DType::f32);
    compare_topk_on_gpu({29, 2, 1, 301, 1, 24}, false, pat, DType::f32);
    compare_topk_on_gpu({7, 1, 1, 8191, 1, 64}, false, pat, DType::f32);
    for (DType cdt : {DType::f32, DType::bf16}) {
      compare_topk_on_gpu({29, 2, 2, 37, 2, 5}, true, pat, cdt);
      compare_topk_on_gpu({17, 2, 2, 301, 2, 24}, true, pat, cdt);
      compare_topk_on_gpu({9, 2, 3, 129, 1, 33}, true, pat, cdt);
      compare_topk_on_gpu({5, 3, 4, 2049, 4, 64}, true, pat, cdt);
    }
    arena_for(Device::cuda()).reset();
  }
  compare_topk_on_gpu({3, 8, 1, 1, 1, 1}, false, Pattern::random, DType::f32);  // n = knn = 1
}

TEST_CASE("memory retrieval autograd on CUDA matches CPU", "[gpu][memory]") {
  UM_REQUIRE_GPU();
  PoisonArena poison(Device::cuda());
  const Device gpu = Device::cuda(), cpu = Device::cpu();
  for (DType dt : {DType::f32, DType::bf16})
    for (int64_t qr : {1, 2}) {
      ops::ScoreShape s{2, 37, 2, qr, 8};
      const int64_t T = 11;
      // Small-integer queries and keys: the scores are exact on both devices, so the selections agree.
      Tensor q = randint({T, 2 * 2 * qr * 8}, 5, DType::f32, cpu, 130),
             keys = randint({2 * 2 * 2 * 37, 8}, 5, DType::f32, cpu, 131);
      Tensor u = uniform({2, 2}, DType::f32, cpu, 132, 0.2, 1.0), v = uniform({2, 2}, DType::f32, cpu, 133, 0.2, 1.0);
      Tensor cores = uniform({2, 2, 2, 2}, DType::f32, cpu, 134, 0.0, 1.0);
      auto forward = [&](const Tensor& uu, const Tensor& vv) {
        return [&s, uu, vv](const std::vector<Tensor>& x) {
          return ops::memory_topk(ops::memory_scores(x[0], x[1], s), uu, vv, x[2], {5, GridScore::tucker}).scores;
        };
      };
      std::vector<Tensor> cpu_in = {q, keys, cores}, gpu_in = {convert(q, dt, gpu), convert(keys, dt, gpu), cores.to(gpu)};
      for (auto& t : cpu_in) t.set_requires_grad(true);
      for (auto& t : gpu_in) t.set_requires_grad(true);
      Tensor R = randn({T, 2 * 5, 2}, DType::f32, cpu, 135);
      auto ref = grads_of_projection(forward(u, v), cpu_in, R);
      auto out = grads_of_projection(forward(u.to(gpu), v.to(gpu)), gpu_in, R);
      INFO(dtype_name(dt) << " q_ranks " << qr);
      const double tol = dt == DType::f32 ? kTolF32 : kTolBF16;
      for (size_t k = 0; k < 3; ++k) CHECK(rel_error(out[k], ref[k]) < tol);
      arena_for(gpu).reset();
    }
}
