// Mixture of experts: router, dispatch/combine, grouped linear and the whole layer; CPU values against
// naive formulas, float64 gradchecks, CUDA vs CPU ([gpu]). Configs and models: test_moe_model.cpp.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "grouped_rows.h"
#include "src/nn/moe.h"
#include "testing.h"
#include "ultramem/ops/elementwise.h"
#include "ultramem/ops/grouped_linear.h"
#include "ultramem/ops/moe_dispatch.h"
#include "ultramem/ops/moe_router.h"
#include "ultramem/ops/moe_router_logits.h"

using namespace um;
using namespace um::testing;

namespace {


// Logits whose probabilities are well separated (no near-ties anywhere in a row): each row is a random
// permutation of 0, gap, 2 gap, ... plus small noise.
Tensor separated_logits(int64_t N, int64_t E, DType dt, uint64_t seed, double gap = 0.4) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> noise(-0.05 * gap, 0.05 * gap);
  std::vector<double> v(size_t(N * E));
  for (int64_t t = 0; t < N; ++t) {
    std::vector<int> perm(static_cast<size_t>(E));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    for (int64_t e = 0; e < E; ++e) v[size_t(t * E + e)] = gap * perm[size_t(e)] + noise(rng) - gap * double(E) / 2;
  }
  return Tensor::from_doubles(v, Shape{N, E}, dt);
}

struct NaiveRouting {
  std::vector<double> weights, balance_z;
  std::vector<int64_t> experts, counts;
};

NaiveRouting naive_router(const Tensor& logits, const ops::MoeRouterOptions& o) {
  const int64_t N = logits.dim(0), E = logits.dim(1), k = o.top_k;
  std::vector<double> x = logits.to_doubles();
  NaiveRouting r;
  r.counts.assign(size_t(E), 0);
  std::vector<double> P(size_t(E), 0.0);
  double z = 0;
  for (int64_t t = 0; t < N; ++t) {
    double m = -INFINITY, s = 0;
    for (int64_t e = 0; e < E; ++e) m = std::max(m, x[size_t(t * E + e)]);
    for (int64_t e = 0; e < E; ++e) s += std::exp(x[size_t(t * E + e)] - m);
    z += std::pow(m + std::log(s), 2);
    std::vector<double> p(static_cast<size_t>(E));
    for (int64_t e = 0; e < E; ++e) P[size_t(e)] += (p[size_t(e)] = std::exp(x[size_t(t * E + e)] - m) / s) / double(N);
    std::vector<int64_t> idx(static_cast<size_t>(E));
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return p[size_t(a)] > p[size_t(b)]; });
    double sel = 0;
    for (int64_t j = 0; j < k; ++j) sel += p[size_t(idx[size_t(j)])];
    for (int64_t j = 0; j < k; ++j) {
      r.experts.push_back(idx[size_t(j)]);
      r.weights.push_back(p[size_t(idx[size_t(j)])] / (o.renormalize ? sel : 1.0));
      ++r.counts[size_t(idx[size_t(j)])];
    }
  }
  double bal = 0;
  for (int64_t e = 0; e < E; ++e) bal += double(r.counts[size_t(e)]) / double(N * k) * P[size_t(e)];
  r.balance_z = {o.balance_weight * double(E) * bal, o.z_weight * z / double(N)};
  return r;
}

double gelu_ref(double v) { return 0.5 * v * (1 + std::tanh(0.7978845608028654 * (v + 0.044715 * v * v * v))); }

// y[t] = sum_j w[t, j] MLP_{e_j}(x[t]) in double, straight from the definitions.
std::vector<double> naive_moe(const Tensor& x, const Tensor& w1, const Tensor& w2, const std::vector<int64_t>& experts,
                              const std::vector<double>& weights, int64_t k, bool swiglu) {
  const int64_t N = x.dim(0), d = x.dim(1), h = w2.dim(1), hin = w1.dim(1);
  std::vector<double> vx = x.to_doubles(), v1 = w1.to_doubles(), v2 = w2.to_doubles(), y(size_t(N * d), 0.0);
  for (int64_t t = 0; t < N; ++t)
    for (int64_t j = 0; j < k; ++j) {
      const int64_t e = experts[size_t(t * k + j)];
      std::vector<double> pre(static_cast<size_t>(hin), 0.0), a(static_cast<size_t>(h));
      for (int64_t o = 0; o < hin; ++o)
        for (int64_t c = 0; c < d; ++c) pre[size_t(o)] += v1[size_t((e * hin + o) * d + c)] * vx[size_t(t * d + c)];
      for (int64_t o = 0; o < h; ++o) {
        if (swiglu) {
          const double g = pre[size_t(o)], u = pre[size_t(h + o)];
          a[size_t(o)] = g / (1 + std::exp(-g)) * u;
        } else {
          a[size_t(o)] = gelu_ref(pre[size_t(o)]);
        }
      }
      for (int64_t c = 0; c < d; ++c) {
        double s = 0;
        for (int64_t o = 0; o < h; ++o) s += v2[size_t((e * h + o) * d + c)] * a[size_t(o)];
        y[size_t(t * d + c)] += weights[size_t(t * k + j)] * s;
      }
    }
  return y;
}

}  // namespace

TEST_CASE("moe router: CPU values match the formulas", "[moe][ops]") {
  for (bool renorm : {false, true}) {
    for (int64_t k : {1, 2, 3}) {
      for (DType dt : {DType::f32, DType::f64}) {
        ops::MoeRouterOptions o{k, renorm, 0.01, 0.001};
        Tensor logits = convert(randn({13, 6}, DType::f64, Device::cpu(), 1, 2.0), dt, Device::cpu());
        ops::MoeRouting r = ops::moe_router(logits, o);
        NaiveRouting ref = naive_router(logits, o);
        INFO("k " << k << " renorm " << renorm << " " << dtype_name(dt));
        CHECK(r.experts.to_ints() == ref.experts);
        CHECK(r.counts.to_ints() == ref.counts);
        const double tol = dt == DType::f32 ? kTolF32 : 1e-12;
        CHECK(rel_error(r.weights.to_doubles(), ref.weights) < tol);
        CHECK(std::abs(r.balance_loss.to_doubles()[0] - ref.balance_z[0]) < tol * ref.balance_z[0]);
        CHECK(std::abs(r.z_loss.to_doubles()[0] - ref.balance_z[1]) < tol * ref.balance_z[1]);
        if (k == 1 && !renorm) {
          // Perfectly balanced routing with uniform probabilities gives balance = weight exactly.
          Tensor flat = Tensor::from_doubles(std::vector<double>(size_t(4 * 4), 0.0), Shape{4, 4}, dt);
          ops::MoeRouting u = ops::moe_router(flat, {4, false, 0.01, 0.0});
          CHECK(std::abs(u.balance_loss.to_doubles()[0] - 0.01) < 1e-7);
          CHECK(u.counts.to_ints() == std::vector<int64_t>{4, 4, 4, 4});
        }
      }
    }
  }
  // Ties go to the lower expert index, as the GPU's.
  Tensor tied = Tensor::from_doubles({1, 3, 3, 0, 3, 1}, Shape{1, 6}, DType::f32);
  CHECK(ops::moe_router(tied, {2, false, 0, 0}).experts.to_ints() == std::vector<int64_t>{1, 2});
  CHECK_THROWS_WITH(ops::moe_router(tied, {7, false, 0, 0}), Catch::Contains("top_k"));
  arena_for(Device::cpu()).reset();
}

TEST_CASE("moe router: float64 gradcheck of weights, balance and z losses", "[moe][ops]") {
  for (bool renorm : {false, true}) {
    for (int64_t k : {1, 2, 3}) {
      Tensor logits = separated_logits(7, 5, DType::f64, 10 + uint64_t(k));
      logits.set_requires_grad(true);
      ops::MoeRouterOptions o{k, renorm, 0.3, 0.2};
      INFO("k " << k << " renorm " << renorm);
      CHECK(gradcheck([o](const std::vector<Tensor>& in) { return ops::moe_router(in[0], o).weights; }, {logits}) <
            kTolGradcheck);
      CHECK(gradcheck([o](const std::vector<Tensor>& in) { return ops::moe_router(in[0], o).balance_loss; },
                      {logits}) < kTolGradcheck);
      CHECK(gradcheck([o](const std::vector<Tensor>& in) { return ops::moe_router(in[0], o).z_loss; }, {logits}) <
            kTolGradcheck);
    }
  }
}

TEST_CASE("moe router logits: CPU equals x . W^T, float64 gradcheck", "[moe][ops]") {
  const int64_t N = 9, d = 6, E = 5;
  Tensor x = randn({N, d}, DType::f64, Device::cpu(), 20), W = randn({E, d}, DType::f64, Device::cpu(), 21);
  const std::vector<double> xv = x.to_doubles(), wv = W.to_doubles();
  const std::vector<double> lv = ops::moe_router_logits(x, W).to_doubles();
  std::vector<double> want(size_t(N * E), 0.0);
  for (int64_t t = 0; t < N; ++t)
    for (int64_t e = 0; e < E; ++e)
      for (int64_t c = 0; c < d; ++c) want[size_t(t * E + e)] += xv[size_t(t * d + c)] * wv[size_t(e * d + c)];
  CHECK(rel_error(lv, want) < 1e-14);
  x.set_requires_grad(true);
  W.set_requires_grad(true);
  CHECK(gradcheck([](const std::vector<Tensor>& in) { return ops::moe_router_logits(in[0], in[1]); }, {x, W}) <
        kTolGradcheck);
  // f32 inputs give f32 logits; mismatched dtypes are refused by name.
  CHECK(ops::moe_router_logits(convert(x, DType::f32, Device::cpu()), convert(W, DType::f32, Device::cpu())).dtype() ==
        DType::f32);
  CHECK_THROWS_WITH(ops::moe_router_logits(x, convert(W, DType::f32, Device::cpu())),
                    Catch::Contains("moe_router_logits: W"));
}

TEST_CASE("moe dispatch: permute, row weights and combine values and float64 gradcheck", "[moe][ops]") {
  const std::vector<int64_t> ids = {3, 0, 0, 2, 3, 2, 0, 3, 2, 0};
  for (int64_t capacity : {0, 2}) {
    ops::MoePlan p = ops::moe_plan(experts_tensor(ids, 5, 2), 5, capacity);
    Tensor x = randn({5, 3}, DType::f64, Device::cpu(), 20);
    Tensor xs = ops::moe_permute(x, p);
    std::vector<double> vx = x.to_doubles(), vxs = xs.to_doubles();
    std::vector<int64_t> sorted = p.sorted_assignment.to_ints(), row_of = p.row_of.to_ints();
    for (int64_t r = 0; r < 10; ++r)
      for (int64_t c = 0; c < 3; ++c)  // dropped rows are zero
        CHECK(vxs[size_t(r * 3 + c)] ==
              (row_of[size_t(sorted[size_t(r)])] < 0 ? 0.0 : vx[size_t(sorted[size_t(r)] / 2 * 3 + c)]));
    Tensor ys = randn({10, 3}, DType::f64, Device::cpu(), 21), w = randn({5, 2}, DType::f64, Device::cpu(), 22);
    std::vector<double> vys = ys.to_doubles(), vw = w.to_doubles(), expect(15, 0.0), expect_w(10, 0.0);
    for (int64_t t = 0; t < 5; ++t)
      for (int64_t j = 0; j < 2; ++j) {
        const int64_t r = row_of[size_t(t * 2 + j)];
        if (r < 0) continue;
        expect_w[size_t(r)] = vw[size_t(t * 2 + j)];
        for (int64_t c = 0; c < 3; ++c) expect[size_t(t * 3 + c)] += vys[size_t(r * 3 + c)];
      }
    CHECK(rel_error(ops::moe_combine(ys, p).to_doubles(), expect) < 1e-14);
    CHECK(ops::moe_row_weights(w, p).to_doubles() == expect_w);  // dropped rows 0
    INFO("capacity " << capacity);
    x.set_requires_grad(true);
    // The plan lives in the arena, which gradcheck resets: each evaluation builds its own.
    auto plan = [ids, capacity] { return ops::moe_plan(experts_tensor(ids, 5, 2), 5, capacity); };
    CHECK(gradcheck([plan](const std::vector<Tensor>& in) { return ops::moe_permute(in[0], plan()); }, {x}) <
          kTolGradcheck);
    ys.set_requires_grad(true);
    CHECK(gradcheck([plan](const std::vector<Tensor>& in) { return ops::moe_combine(in[0], plan()); }, {ys}) <
          kTolGradcheck);
    w.set_requires_grad(true);
    CHECK(gradcheck([plan](const std::vector<Tensor>& in) { return ops::moe_row_weights(in[0], plan()); }, {w}) <
          kTolGradcheck);
  }
}

TEST_CASE("grouped linear: CPU values per group and float64 gradcheck", "[moe][ops]") {
  // 4 groups over 11 rows: an empty group, and (second layout) a gap of rows outside every group.
  for (bool gaps : {false, true}) {
    ops::RowGroups g;
    g.start = gaps ? std::vector<int64_t>{0, 3, 3, 8} : std::vector<int64_t>{0, 3, 3, 7};
    g.size = gaps ? std::vector<int64_t>{3, 0, 4, 2} : std::vector<int64_t>{3, 0, 4, 4};
    CHECK(g.covers(11) == !gaps);
    for (DType dt : {DType::f32, DType::f64}) {
      Tensor x = randn({11, 5}, dt, Device::cpu(), 30), W = randn({4, 6, 5}, dt, Device::cpu(), 31);
      Tensor y = ops::grouped_linear(x, W, g);
      std::vector<double> vx = x.to_doubles(), vw = W.to_doubles(), expect(size_t(11 * 6), 0.0);
      for (int64_t q = 0; q < 4; ++q)
        for (int64_t r = g.start[size_t(q)]; r < g.start[size_t(q)] + g.size[size_t(q)]; ++r)
          for (int64_t o = 0; o < 6; ++o)
            for (int64_t c = 0; c < 5; ++c) expect[size_t(r * 6 + o)] += vw[size_t((q * 6 + o) * 5 + c)] * vx[size_t(r * 5 + c)];
      INFO("gaps " << gaps << " " << dtype_name(dt));
      CHECK(rel_error(y.to_doubles(), expect) < (dt == DType::f32 ? kTolF32 : 1e-13));
    }
    Tensor x = randn({11, 5}, DType::f64, Device::cpu(), 32), W = randn({4, 6, 5}, DType::f64, Device::cpu(), 33);
    x.set_requires_grad(true);
    W.set_requires_grad(true);
    CHECK(gradcheck([g](const std::vector<Tensor>& in) { return ops::grouped_linear(in[0], in[1], g); }, {x, W}) <
          kTolGradcheck);
    // in_out: W [G, in, out] holds each W_g transposed, and gives the same product.
    const std::vector<double> vw = W.to_doubles();
    std::vector<double> vt(vw.size());
    for (int64_t q = 0; q < 4; ++q)
      for (int64_t o = 0; o < 6; ++o)
        for (int64_t c = 0; c < 5; ++c) vt[size_t((q * 5 + c) * 6 + o)] = vw[size_t((q * 6 + o) * 5 + c)];
    Tensor Wt = Tensor::from_doubles(vt, Shape{4, 5, 6}, DType::f64, Device::cpu());
    CHECK(rel_error(ops::grouped_linear(x, Wt, g, ops::GroupedWeight::in_out), ops::grouped_linear(x, W, g)) < 1e-15);
    Wt.set_requires_grad(true);
    auto in_out = [g](const std::vector<Tensor>& in) {
      return ops::grouped_linear(in[0], in[1], g, ops::GroupedWeight::in_out);
    };
    CHECK(gradcheck(in_out, {x, Wt}) < kTolGradcheck);
    CHECK_THROWS_WITH(ops::grouped_linear(x, W, g, ops::GroupedWeight::in_out),
                      Catch::Contains("grouped_linear: x") && Catch::Contains("rows of 6"));
  }
  ops::RowGroups bad{{0, 2}, {3, 1}};
  Tensor x = randn({4, 5}, DType::f32, Device::cpu(), 34), W = randn({2, 6, 5}, DType::f32, Device::cpu(), 35);
  CHECK_THROWS_WITH(ops::grouped_linear(x, W, bad), Catch::Contains("grouped_linear: group 1"));
  arena_for(Device::cpu()).reset();
}

namespace {

// Layer inputs with router logits far from top-k ties: x rows and router chosen so logits = x . R^T is
// separated_logits (x = identity-like block, R = the logits transposed) plus small random parts.
struct LayerInputs {
  Tensor x, router, w1, w2;
};

LayerInputs layer_inputs(int64_t N, int64_t d, int64_t E, int64_t h, bool swiglu, DType dt, uint64_t seed) {
  LayerInputs in;
  in.x = randn({N, d}, dt, Device::cpu(), seed, 1.0);
  in.router = randn({E, d}, dt, Device::cpu(), seed + 1, 0.5);
  in.w1 = randn({E, swiglu ? 2 * h : h, d}, dt, Device::cpu(), seed + 2, 1.0 / std::sqrt(double(d)));
  in.w2 = randn({E, h, d}, dt, Device::cpu(), seed + 3, 1.0 / std::sqrt(double(h)));
  return in;
}

// Smallest gap between the k-th and (k+1)-th probability over tokens (finite differences need it large).
double topk_margin(const Tensor& x, const Tensor& router, int64_t k) {
  const int64_t N = x.dim(0), d = x.dim(1), E = router.dim(0);
  std::vector<double> vx = x.to_doubles(), vr = router.to_doubles();
  double worst = INFINITY;
  for (int64_t t = 0; t < N; ++t) {
    std::vector<double> l(size_t(E), 0.0);
    for (int64_t e = 0; e < E; ++e)
      for (int64_t c = 0; c < d; ++c) l[size_t(e)] += vx[size_t(t * d + c)] * vr[size_t(e * d + c)];
    std::sort(l.begin(), l.end(), std::greater<double>());
    if (k < E) worst = std::min(worst, l[size_t(k - 1)] - l[size_t(k)]);
  }
  return worst;
}

nn::MoeLayerOptions layer_options(int64_t E, int64_t k, bool swiglu, bool renorm, double capacity = 0) {
  nn::MoeLayerOptions o;
  o.num_experts = E;
  o.swiglu = swiglu;
  o.capacity_factor = capacity;
  o.router = {k, renorm, 0.25, 0.125};
  return o;
}

}  // namespace

TEST_CASE("moe layer: CPU output equals the per-token definition", "[moe]") {
  for (bool swiglu : {false, true}) {
    for (bool renorm : {false, true}) {
      LayerInputs in = layer_inputs(9, 6, 4, 5, swiglu, DType::f64, 40);
      nn::MoeLayerOptions o = layer_options(4, 2, swiglu, renorm);
      nn::MoeLayerResult r = nn::moe_layer(in.x, in.router, in.w1, in.w2, o);
      std::vector<double> expect =
          naive_moe(in.x, in.w1, in.w2, r.routing.experts.to_ints(), r.routing.weights.to_doubles(), 2, swiglu);
      INFO("swiglu " << swiglu << " renorm " << renorm);
      CHECK(rel_error(r.y.to_doubles(), expect) < 1e-12);
      CHECK(r.plan.counts.size() == 4);
      CHECK(std::accumulate(r.plan.counts.begin(), r.plan.counts.end(), int64_t(0)) == 18);
    }
  }
  arena_for(Device::cpu()).reset();
}

TEST_CASE("moe layer: float64 gradcheck of the whole layer, router included", "[moe]") {
  for (bool swiglu : {false, true}) {
    for (double capacity : {0.0, 1.0}) {
      const int64_t E = 4, k = 2;
      LayerInputs in = layer_inputs(7, 5, E, 3, swiglu, DType::f64, 50 + uint64_t(swiglu));
      REQUIRE(topk_margin(in.x, in.router, k) > 1e-3);
      nn::MoeLayerOptions o = layer_options(E, k, swiglu, swiglu, capacity);
      for (const Tensor* t : {&in.x, &in.router, &in.w1, &in.w2}) t->set_requires_grad(true);
      INFO("swiglu " << swiglu << " capacity " << capacity);
      CHECK(gradcheck([o](const std::vector<Tensor>& v) { return nn::moe_layer(v[0], v[1], v[2], v[3], o).y; },
                      {in.x, in.router, in.w1, in.w2}) < kTolGradcheck);
      // The auxiliary losses reach the router and x (not the experts).
      in.w1.set_requires_grad(false);
      in.w2.set_requires_grad(false);
      CHECK(gradcheck(
                [o](const std::vector<Tensor>& v) {
                  nn::MoeLayerResult r = nn::moe_layer(v[0], v[1], v[2], v[3], o);
                  return ops::add(r.routing.balance_loss, r.routing.z_loss);
                },
                {in.x, in.router, in.w1, in.w2}) < kTolGradcheck);
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// CUDA vs CPU.

namespace {

struct LayerRun {
  std::vector<double> y, dx, drouter, dw1, dw2, balance, z;
  std::vector<int64_t> experts, counts;
};

// Forward + backward of the layer with y's gradient dy and gradient 1 into both aux losses.
LayerRun run_layer(const LayerInputs& in, const nn::MoeLayerOptions& o, const Tensor& dy) {
  LayerRun out;
  Tape tape;
  {
    TapeScope scope(tape);
    nn::MoeLayerResult r = nn::moe_layer(in.x, in.router, in.w1, in.w2, o);
    Tensor loss = Tensor::zeros(Shape{1}, DType::f32, in.x.device());
    loss.set_requires_grad(true);
    Tensor bal = r.routing.balance_loss, z = r.routing.z_loss, y = r.y;
    tape.record([y, dy, bal, z] {
      grad_slot(y).grad.copy_from(dy);
      for (const Tensor& l : {bal, z})
        grad_slot(l).grad.copy_from(Tensor::from_doubles({1.0}, Shape{1}, l.dtype(), l.device()));
    });
    tape.backward(loss);
    out.y = r.y.to_doubles();
    out.balance = r.routing.balance_loss.to_doubles();
    out.z = r.routing.z_loss.to_doubles();
    out.experts = r.routing.experts.to_ints();
    out.counts = r.plan.counts;
  }
  out.dx = grad_of(in.x).to_doubles();
  out.drouter = grad_of(in.router).to_doubles();
  out.dw1 = grad_of(in.w1).to_doubles();
  out.dw2 = grad_of(in.w2).to_doubles();
  return out;
}

LayerInputs leaves(const LayerInputs& host, DType dt, Device dev, bool master_grads) {
  LayerInputs g{convert(host.x, dt, dev), convert(host.router, dt, dev), convert(host.w1, dt, dev),
                convert(host.w2, dt, dev)};
  for (const Tensor* t : {&g.x, &g.router, &g.w1, &g.w2}) t->set_requires_grad(true);
  if (master_grads)  // parameters: f32 master gradients behind the compute copies, NaN until written
    for (const Tensor* t : {&g.router, &g.w1, &g.w2}) t->set_grad(nan_filled(t->shape(), DType::f32, dev));
  return g;
}

}  // namespace

TEST_CASE("moe router CUDA matches CPU, deterministic", "[gpu][moe]") {
  UM_REQUIRE_GPU();
  PoisonArena poison(Device::cuda());
  struct Case {
    int64_t N, E, k;
    bool renorm, ties = false;  // ties: logits of 4 values, so most picks break ties by expert index
  };
  // E from 5 to 1024 covers every register width of the top-k kernel (1 to 32 values per lane); N 20000
  // fills its 1,024-block grid, so each warp sums several tokens into the column sums.
  for (Case c : {Case{1001, 8, 2, false}, Case{777, 64, 8, true}, Case{33, 5, 5, false}, Case{4097, 64, 8, false},
                 Case{300, 100, 16, true}, Case{200, 257, 4, false}, Case{65, 1024, 8, false},
                 Case{20000, 64, 8, false}, Case{2000, 64, 8, true, true}, Case{300, 100, 16, false, true}}) {
    INFO("N " << c.N << " E " << c.E << " k " << c.k << " renorm " << c.renorm << " ties " << c.ties);
    ops::MoeRouterOptions o{c.k, c.renorm, 0.01, 0.001};
    Tensor logits = separated_logits(c.N, c.E, DType::f32, 60, 0.2);
    if (c.ties) {  // equal logits give bitwise-equal probabilities on both devices
      std::vector<double> v = randn({c.N, c.E}, DType::f64, Device::cpu(), 62).to_doubles();
      for (double& x : v) x = std::floor(std::fabs(x) * 2) / 2;  // 0, 0.5, 1, ... mostly 0 and 0.5
      logits = Tensor::from_doubles(v, Shape{c.N, c.E}, DType::f32);
    }
    Tensor gw = randn({c.N, c.k}, DType::f32, Device::cpu(), 61);
    Tensor g1 = Tensor::from_doubles({1.5}, Shape{1}, DType::f32), g2 = Tensor::from_doubles({0.5}, Shape{1}, DType::f32);
    auto run = [&](Device dev) {
      Tensor l = logits.to(dev);
      Tensor probs = Tensor::empty(l.shape(), DType::f32, dev), lse = Tensor::empty({c.N}, DType::f32, dev);
      Tensor w = Tensor::empty({c.N, c.k}, DType::f32, dev), ex = Tensor::empty({c.N, c.k}, DType::i32, dev);
      Tensor cnt = Tensor::empty({c.E}, DType::i32, dev), bal = Tensor::empty({1}, DType::f32, dev),
             z = Tensor::empty({1}, DType::f32, dev), dl = Tensor::empty(l.shape(), DType::f32, dev);
      ops::moe_router_forward(l, o, probs, lse, w, ex, cnt, bal, z);
      ops::moe_router_backward(o, probs, lse, w, ex, cnt, gw.to(dev), g1.to(dev), g2.to(dev), GradSlot{dl, false});
      return std::vector<Tensor>{w, ex, cnt, bal, z, dl};
    };
    std::vector<Tensor> ref = run(Device::cpu()), g = run(Device::cuda()), g2run = run(Device::cuda());
    CHECK(g[1].to_ints() == ref[1].to_ints());
    CHECK(g[2].to_ints() == ref[2].to_ints());
    for (int i : {0, 3, 4, 5}) CHECK(rel_error(g[size_t(i)], ref[size_t(i)]) < kTolF32);
    for (int i = 0; i < 6; ++i) CHECK(g[size_t(i)].to_doubles() == g2run[size_t(i)].to_doubles());
  }
}

TEST_CASE("moe router logits CUDA matches CPU: bf16 forward exact to fp32, hi/lo backward near fp32", "[gpu][moe]") {
  UM_REQUIRE_GPU();
  PoisonArena poison(Device::cuda());
  struct Case {
    int64_t N, d, E;
  };
  for (Case c : {Case{1001, 64, 8}, Case{4097, 768, 64}, Case{33, 40, 5}, Case{257, 24, 13}}) {
    for (DType dt : {DType::f32, DType::bf16}) {
      for (bool acc : {false, true}) {
        INFO("N " << c.N << " d " << c.d << " E " << c.E << " " << dtype_name(dt) << " accumulate " << acc);
        const Tensor x = rounded(randn({c.N, c.d}, DType::f32, Device::cpu(), 70), dt);
        const Tensor W = rounded(randn({c.E, c.d}, DType::f32, Device::cpu(), 71, 0.05), dt);
        const Tensor g = randn({c.N, c.E}, DType::f32, Device::cpu(), 72, 1e-3);  // fp32 dlogits, full mantissa
        const Tensor dx0 = rounded(randn({c.N, c.d}, DType::f32, Device::cpu(), 73, 1e-3), dt);
        const Tensor dw0 = randn({c.E, c.d}, DType::f32, Device::cpu(), 74, 1e-2);
        // The reference: f64 GEMMs of the same (rounded) values.
        auto run = [&](Device dev, DType in_dt, DType grad_dt) {
          Tensor xd = convert(x, in_dt, dev), wd = convert(W, in_dt, dev);
          Tensor logits = Tensor::empty({c.N, c.E}, in_dt == DType::f64 ? DType::f64 : DType::f32, dev);
          ops::moe_router_logits_forward(xd, wd, logits);
          Tensor dx = acc ? convert(dx0, in_dt, dev) : nan_filled({c.N, c.d}, in_dt, dev);
          Tensor dw = acc ? convert(dw0, grad_dt, dev) : nan_filled({c.E, c.d}, grad_dt, dev);
          ops::moe_router_logits_backward(xd, wd, convert(g, logits.dtype(), dev), GradSlot{dx, acc},
                                          GradSlot{dw, acc});
          return std::vector<Tensor>{logits, dx, dw};
        };
        const std::vector<Tensor> ref = run(Device::cpu(), DType::f64, DType::f64);
        const std::vector<Tensor> gpu = run(Device::cuda(), dt, DType::f32), again = run(Device::cuda(), dt, DType::f32);
        CHECK(rel_error(gpu[0], ref[0]) < kTolF32);
        // dx is rounded once to x's dtype; dW (f32) carries dlogits to 2^-17 with bf16 inputs, where
        // bf16(dlogits) alone would leave ~2^-9.
        CHECK(rel_error(gpu[1], ref[1]) < (dt == DType::f32 ? kTolF32 : kTolBF16));
        CHECK(rel_error(gpu[2], ref[2]) < 3 * kTolF32);
        for (int i = 0; i < 3; ++i) CHECK(gpu[size_t(i)].to_doubles() == again[size_t(i)].to_doubles());
      }
    }
  }
}

// Sets the grouped-GEMM path for one scope (tests cover every path whatever UM_GROUPED_GEMM says).
struct GroupedGemmMode {
#if ULTRAMEM_CUDA
  explicit GroupedGemmMode(const std::string& m) : saved(cuda::grouped_gemm_mode()) { cuda::set_grouped_gemm_mode(m); }
  ~GroupedGemmMode() { cuda::set_grouped_gemm_mode(saved); }
  std::string saved;
#else
  explicit GroupedGemmMode(const std::string&) {}  // no GPU paths to choose between
#endif
};

TEST_CASE("moe dispatch and grouped linear CUDA match CPU: odd sizes, empty experts, capacity", "[gpu][moe]") {
  UM_REQUIRE_GPU();
  PoisonArena poison(Device::cuda());
  for (const char* mode : {"auto", "grouped", "loop"}) {
    GroupedGemmMode path(mode);
    for (DType dt : {DType::f32, DType::bf16}) {
      for (int64_t capacity : {0, 40}) {
        for (int64_t d : {64, 36, 13}) {
          const int64_t N = 211, k = 2, E = 7, out = 24;
          // Expert 1 and 5 never chosen (empty groups).
          std::vector<int64_t> ids(size_t(N * k));
          std::mt19937_64 rng(70);
          const int64_t choices[] = {0, 2, 3, 4, 6};
          for (int64_t t = 0; t < N; ++t) {
            const int64_t a = choices[rng() % 5];
            int64_t b = choices[rng() % 5];
            while (b == a) b = choices[rng() % 5];
            ids[size_t(t * k)] = a, ids[size_t(t * k + 1)] = b;
          }
          INFO(mode << " " << dtype_name(dt) << " capacity " << capacity << " d " << d);
          auto host = [dt](const Tensor& t) { return rounded(t, dt); };
          const Tensor x = host(randn({N, d}, DType::f32, Device::cpu(), 71));
          const Tensor W = host(randn({E, out, d}, DType::f32, Device::cpu(), 72, 0.2));
          const Tensor w = randn({N, k}, DType::f32, Device::cpu(), 73);
          const Tensor dy = host(randn({N, out}, DType::f32, Device::cpu(), 74));
          auto run = [&](Device dev, DType t) {
            Tensor gx = convert(x, t, dev), gW = convert(W, t, dev), gw = w.to(dev);
            for (const Tensor* l : {&gx, &gW, &gw}) l->set_requires_grad(true);
            if (dev.is_cuda()) gW.set_grad(nan_filled(W.shape(), DType::f32, dev));
            Tape tape;
            std::vector<std::vector<double>> res;
            {
              TapeScope scope(tape);
              ops::MoePlan p = ops::moe_plan(experts_tensor(ids, N, k, dev), E, capacity);
              Tensor xs = ops::moe_permute(gx, p);
              Tensor ys = ops::grouped_linear(xs, gW, p.groups);
              Tensor y = ops::moe_combine(ops::scale_rows(ys, ops::moe_row_weights(gw, p)), p);
              Tensor loss = Tensor::zeros(Shape{1}, DType::f32, dev);
              loss.set_requires_grad(true);
              Tensor gdy = convert(dy, t, dev);
              tape.record([y, gdy] { grad_slot(y).grad.copy_from(gdy); });
              tape.backward(loss);
              res.push_back(y.to_doubles());
              std::vector<double> sizes(p.groups.size.begin(), p.groups.size.end());
              res.push_back(sizes);
            }
            res.push_back(grad_of(gx).to_doubles());
            res.push_back(grad_of(gW).to_doubles());
            res.push_back(grad_of(gw).to_doubles());
            return res;
          };
          auto ref = run(Device::cpu(), DType::f32), g = run(Device::cuda(), dt), again = run(Device::cuda(), dt);
          const double tol = dt == DType::f32 ? kTolF32 : kTolBF16;
          CHECK(g[1] == ref[1]);  // group sizes
          CHECK(rel_error(g[0], ref[0]) < tol);
          CHECK(rel_error(g[2], ref[2]) < tol);
          CHECK(rel_error(g[3], ref[3]) < tol);
          CHECK(rel_error(g[4], ref[4]) < tol);
          for (size_t i = 0; i < g.size(); ++i) CHECK(g[i] == again[i]);  // bitwise reproducible
          arena_for(Device::cpu()).reset();
        }
      }
    }
  }
}

TEST_CASE("moe permute CUDA equals CPU bitwise: scatter (dropless, k <= 32) and gather (capacity or k > 32)",
          "[gpu][moe]") {
  UM_REQUIRE_GPU();
  PoisonArena poison(Device::cuda());  // a row the kernel misses stays NaN
  for (int64_t k : {1, 3, 8, 32, 33}) {
    for (int64_t capacity : {0, 5}) {
      for (int64_t d : {768, 776, 13}) {  // whole pack steps, a partial last one (97 bf16 packs), scalars
        const int64_t N = 97, E = 40;
        INFO("k " << k << " capacity " << capacity << " d " << d);
        std::mt19937_64 rng(uint64_t(80 + k));
        std::vector<int64_t> ids(size_t(N * k));
        for (int64_t t = 0; t < N; ++t)
          for (int64_t j = 0; j < k; ++j) ids[size_t(t * k + j)] = (t * 7 + j * 13 + int64_t(rng() % 3)) % E;
        const ops::MoePlan cpu = ops::moe_plan(experts_tensor(ids, N, k), E, capacity);
        const ops::MoePlan gpu = ops::moe_plan(experts_tensor(ids, N, k, Device::cuda()), E, capacity);
        for (DType dt : {DType::bf16, DType::f32}) {  // the CPU reference in f32 (of bf16-exact values)
          const Tensor x = rounded(randn({N, d}, DType::f32, Device::cpu(), 81), dt);
          const std::vector<double> want = ops::moe_permute(x, cpu).to_doubles();
          CHECK(ops::moe_permute(convert(x, dt, Device::cuda()), gpu).to_doubles() == want);
        }
        arena_for(Device::cpu()).reset();
      }
    }
  }
}

TEST_CASE("grouped linear on the sm90 wgmma kernel matches CPU: tile edges, empty groups, gaps, accumulate", "[gpu][moe]") {
  UM_REQUIRE_GPU();
  require_sm90_on_hopper();
  PoisonArena poison(Device::cuda());
  struct Case {
    int64_t in, out;
    std::vector<int64_t> sizes;  // groups_of's sizes: more than 16 non-empty groups each
  };
  const std::vector<Case> cases = {
      {64, 136, repeat({0, 1, 127, 128, 129, 0, 300}, 4)},  // m-tile edges, empty groups, n tail (136 = 128 + 8)
      {200, 72, repeat({5, -3, 260, 0, -17, 64}, 6)},       // k tail (200 = 3 x 64 + 8), rows outside every group
      {768, 816, repeat({130, 1, 0, 61}, 6)},               // the olmoe expert width (816 = 2 x 408)
      {408, 768, repeat({131, 65}, 9)},                     // its down projection (k 408; w2's in_out layout)
      {120, 104, repeat({70, 0, 129}, 6)},                  // k tails of 56 and 40 (forward and dx)
  };
  for (const Case& c : cases) {
    int64_t rows = 0;
    const ops::RowGroups g = groups_of(c.sizes, rows);
    const int64_t G = g.count();
    for (ops::GroupedWeight layout : {ops::GroupedWeight::out_in, ops::GroupedWeight::in_out}) {
      const bool oi = layout == ops::GroupedWeight::out_in;
      INFO("in " << c.in << " out " << c.out << " rows " << rows << " groups " << G << (oi ? " out_in" : " in_out"));
      const Shape ws = oi ? Shape{G, c.out, c.in} : Shape{G, c.in, c.out};
      const Tensor x = rounded(randn({rows, c.in}, DType::f32, Device::cpu(), 90), DType::bf16);
      const Tensor W = rounded(randn(ws, DType::f32, Device::cpu(), 91, 0.1), DType::bf16);
      const Tensor dy = rounded(randn({rows, c.out}, DType::f32, Device::cpu(), 92), DType::bf16);
      const Tensor dx0 = rounded(randn({rows, c.in}, DType::f32, Device::cpu(), 93), DType::bf16);
      const Tensor dW0 = randn(ws, DType::f32, Device::cpu(), 94);
      for (bool acc : {false, true}) {
        INFO("accumulate " << acc);
        auto run = [&](Device dev) {
          const DType dt = dev.is_cuda() ? DType::bf16 : DType::f32;
          Tensor gx = convert(x, dt, dev), gW = convert(W, dt, dev), gdy = convert(dy, dt, dev);
          Tensor y = nan_filled({rows, c.out}, dt, dev);
          ops::grouped_linear_forward(gx, gW, g, y, layout);
          Tensor dx = acc ? convert(dx0, dt, dev) : nan_filled({rows, c.in}, dt, dev);
          Tensor dW = acc ? dW0.to(dev) : nan_filled(W.shape(), DType::f32, dev);
          ops::grouped_linear_backward(gx, gW, gdy, g, GradSlot{dx, acc}, GradSlot{dW, acc}, layout);
          return std::vector<std::vector<double>>{y.to_doubles(), dx.to_doubles(), dW.to_doubles()};
        };
        const auto ref = run(Device::cpu()), gpu = run(Device::cuda()), again = run(Device::cuda());
        CHECK(rel_error(gpu[0], ref[0]) < kTolBF16);
        CHECK(rel_error(gpu[1], ref[1]) < kTolBF16);
        CHECK(rel_error(gpu[2], ref[2]) < 1e-4);  // f32 master gradient of bf16 products
        // Rows outside every group: y = 0, dx = 0 (accumulate: unchanged) exactly.
        for (int64_t r : rows_outside(g, rows)) {
          CHECK(gpu[0][size_t(r * c.out)] == 0.0);
          CHECK(gpu[1][size_t(r * c.in)] == ref[1][size_t(r * c.in)]);
        }
        for (size_t i = 0; i < gpu.size(); ++i) CHECK(gpu[i] == again[i]);  // bitwise reproducible
        arena_for(Device::cpu()).reset();
      }
    }
  }
}

TEST_CASE("moe layer CUDA matches CPU forward and backward, f32 and bf16, deterministic", "[gpu][moe]") {
  UM_REQUIRE_GPU();
  PoisonArena poison(Device::cuda());
  struct Case {
    int64_t N, d, E, k, h;
    bool swiglu;
    double capacity;
  };
  for (Case c : {Case{301, 64, 8, 2, 96, true, 0}, Case{257, 48, 16, 4, 40, false, 0}, Case{129, 64, 8, 2, 64, true, 1.0}}) {
    for (DType dt : {DType::f32, DType::bf16}) {
      INFO("N " << c.N << " E " << c.E << " k " << c.k << " swiglu " << c.swiglu << " capacity " << c.capacity << " "
                << dtype_name(dt));
      LayerInputs h = layer_inputs(c.N, c.d, c.E, c.h, c.swiglu, DType::f32, 80);
      h = {rounded(h.x, dt), rounded(h.router, dt), rounded(h.w1, dt), rounded(h.w2, dt)};
      const Tensor dy = rounded(randn({c.N, c.d}, DType::f32, Device::cpu(), 81), dt);
      nn::MoeLayerOptions o = layer_options(c.E, c.k, c.swiglu, false, c.capacity);
      LayerRun ref = run_layer(leaves(h, DType::f32, Device::cpu(), false), o, dy);
      LayerRun g = run_layer(leaves(h, dt, Device::cuda(), true), o, convert(dy, dt, Device::cuda()));
      LayerRun again = run_layer(leaves(h, dt, Device::cuda(), true), o, convert(dy, dt, Device::cuda()));
      const double tol = dt == DType::f32 ? kTolF32 : kTolBF16;
      CHECK(g.experts == ref.experts);
      CHECK(g.counts == ref.counts);
      CHECK(rel_error(g.y, ref.y) < tol);
      CHECK(rel_error(g.balance, ref.balance) < kTolF32 * 10);
      CHECK(rel_error(g.z, ref.z) < kTolF32 * 10);
      CHECK(rel_error(g.dx, ref.dx) < tol);
      CHECK(rel_error(g.drouter, ref.drouter) < tol);
      CHECK(rel_error(g.dw1, ref.dw1) < tol);
      CHECK(rel_error(g.dw2, ref.dw2) < tol);
      CHECK(g.y == again.y);
      CHECK(g.dx == again.dx);
      CHECK(g.drouter == again.drouter);
      CHECK(g.dw1 == again.dw1);
      CHECK(g.dw2 == again.dw2);
      arena_for(Device::cpu()).reset();
    }
  }
}
