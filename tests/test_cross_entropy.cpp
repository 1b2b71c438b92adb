#include <cmath>

#include "testing.h"
#include "ultramem/ops/cross_entropy.h"
#include "ultramem/ops/elementwise.h"

using namespace um;
using namespace um::testing;

namespace {

// Targets in [0, valid) with the listed rows set to -1 (ignored).
Tensor make_targets(int64_t n, int64_t valid, const std::vector<int64_t>& ignored, uint64_t seed,
                    Device device = Device::cpu()) {
  std::vector<int64_t> t = randint({n}, valid, DType::i64, Device::cpu(), seed).to_ints();
  for (int64_t r : ignored) t[size_t(r)] = -1;
  return Tensor::from_ints(t, {n}, DType::i32, device);
}

// mean over non-ignored rows of log(sum_{j<valid} exp x_j) - x_target, straight from the definition.
double naive_loss(const std::vector<double>& x, const std::vector<int64_t>& t, int64_t vp, int64_t valid) {
  double sum = 0;
  int count = 0;
  for (size_t r = 0; r < t.size(); ++r) {
    if (t[r] < 0) continue;
    double z = 0;
    for (int64_t j = 0; j < valid; ++j) z += std::exp(x[r * vp + j]);
    sum += std::log(z) - x[r * vp + t[r]];
    ++count;
  }
  return sum / count;
}

// d(mean loss)/dx * dloss: (softmax - onehot) * dloss / count on valid columns of non-ignored rows.
std::vector<double> naive_grad(const std::vector<double>& x, const std::vector<int64_t>& t, int64_t vp,
                               int64_t valid, double dloss) {
  int count = 0;
  for (int64_t tr : t) count += tr >= 0;
  std::vector<double> g(x.size(), 0.0);
  for (size_t r = 0; r < t.size(); ++r) {
    if (t[r] < 0) continue;
    double z = 0;
    for (int64_t j = 0; j < valid; ++j) z += std::exp(x[r * vp + j]);
    for (int64_t j = 0; j < valid; ++j)
      g[r * vp + j] = (std::exp(x[r * vp + j]) / z - (j == t[r] ? 1.0 : 0.0)) * dloss / count;
  }
  return g;
}

// Runs loss = cross_entropy(logits) and its backward with seed dloss on a fresh tape.
Tensor run_with_backward(const Tensor& logits, const Tensor& targets, int64_t valid, double dloss) {
  Tape tape;
  TapeScope scope(tape);
  Tensor loss = ops::cross_entropy(logits, targets, valid);
  tape.backward(loss, dloss);
  return loss;
}

}  // namespace

TEST_CASE("cross_entropy: CPU matches a naive log-softmax", "[ops][cross_entropy]") {
  const int64_t n = 7, vp = 13;
  for (DType dt : {DType::f32, DType::f64}) {
    for (int64_t valid : {int64_t(11), int64_t(0)}) {
      Tensor x = randn({n, vp}, dt, Device::cpu(), 5, 3.0);
      Tensor t = make_targets(n, valid > 0 ? valid : vp, {2, 5}, 6);
      Tensor loss = ops::cross_entropy(x, t, valid);
      CHECK(loss.shape() == Shape{1});
      CHECK(loss.dtype() == dt);
      double ref = naive_loss(x.to_doubles(), t.to_ints(), vp, valid > 0 ? valid : vp);
      double got = loss.to_doubles()[0];
      INFO("dtype " << dtype_name(dt) << " valid " << valid << " loss " << got << " naive " << ref);
      CHECK(std::abs(got - ref) <= (dt == DType::f32 ? 1e-6 : 1e-12) * std::abs(ref));
    }
  }
}

TEST_CASE("cross_entropy: float64 gradient with ignored rows and vocabulary padding", "[ops][cross_entropy]") {
  const int64_t n = 6, vp = 9, valid = 7;
  Tensor x = randn({n, vp}, DType::f64, Device::cpu(), 11, 2.0);
  Tensor zero = Tensor::zeros({n, vp}, DType::f64);
  Tensor t = make_targets(n, valid, {1, 4}, 12);
  x.set_requires_grad(true);
  // The add gives cross_entropy an activation of its own: its backward overwrites its input's values.
  auto forward = [&](const std::vector<Tensor>& in) { return ops::cross_entropy(ops::add(in[0], zero), t, valid); };
  double err = gradcheck(forward, {x});
  CHECK(err < kTolGradcheck);

  // Padding columns and ignored rows get exactly zero.
  Tensor R = Tensor::from_doubles({1.0}, {1}, DType::f64);
  std::vector<double> g = grads_of_projection(forward, {x}, R)[0].to_doubles();
  std::vector<double> expect = naive_grad(x.to_doubles(), t.to_ints(), vp, valid, 1.0);
  CHECK(rel_error(g, expect) < 1e-12);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < vp; ++j)
      if (r == 1 || r == 4 || j >= valid) CHECK(g[size_t(r * vp + j)] == 0.0);
}

TEST_CASE("cross_entropy: in-place and accumulating backward give the same gradient", "[ops][cross_entropy]") {
  const int64_t n = 5, vp = 12, valid = 10;
  const double dloss = 0.75;
  Tensor x = randn({n, vp}, DType::f32, Device::cpu(), 21, 2.0);
  Tensor t = make_targets(n, valid, {3}, 22);
  std::vector<double> expect = naive_grad(x.to_doubles(), t.to_ints(), vp, valid, dloss);

  // No gradient yet: the gradient is written over the logits and shares their memory.
  Tensor a = x.to(Device::cpu());
  a.set_requires_grad(true);
  run_with_backward(a, t, valid, dloss);
  Tensor ga = grad_of(a);
  REQUIRE(ga.defined());
  CHECK(ga.data() == a.data());
  std::vector<double> in_place = ga.to_doubles();
  CHECK(rel_error(in_place, expect) < kTolF32);

  // An existing, already written gradient: the backward adds to it and leaves the logits alone.
  Tensor b = x.to(Device::cpu());
  b.set_requires_grad(true);
  Tensor g0 = randn({n, vp}, DType::f32, Device::cpu(), 23);
  b.set_grad(g0.to(Device::cpu()));
  b.impl()->grad_ready = true;
  run_with_backward(b, t, valid, dloss);
  std::vector<double> acc = grad_of(b).to_doubles(), base = g0.to_doubles();
  for (size_t i = 0; i < acc.size(); ++i) acc[i] -= base[i];
  CHECK(rel_error(acc, in_place) < kTolF32);
  CHECK(rel_error(b, x) == 0.0);

  // An allocated gradient not yet written this step (NaN garbage): the backward overwrites it.
  Tensor c = x.to(Device::cpu());
  c.set_requires_grad(true);
  c.set_grad(Tensor::from_doubles(std::vector<double>(size_t(n * vp), NAN), {n, vp}, DType::f32));
  run_with_backward(c, t, valid, dloss);
  CHECK(rel_error(grad_of(c).to_doubles(), in_place) == 0.0);
  CHECK(grad_of(c).data() != c.data());
}

TEST_CASE("cross_entropy: out-of-range targets and bad arguments are errors", "[ops][cross_entropy]") {
  Tensor x = randn({4, 6}, DType::f32, Device::cpu(), 31);
  CHECK_THROWS_WITH(ops::cross_entropy(x, Tensor::from_ints({0, 1, 2, 5}, {4}, DType::i32), 5),
                    Catch::Contains("targets row 3"));
  CHECK_THROWS_WITH(ops::cross_entropy(x, Tensor::from_ints({0, -2, 2, 1}, {4}, DType::i32)),
                    Catch::Contains("targets row 1"));
  CHECK_THROWS_AS(ops::cross_entropy(x, Tensor::from_ints({0, 1, 2, 1}, {4}, DType::i64)), Error);
  CHECK_THROWS_AS(ops::cross_entropy(x, Tensor::from_ints({0, 1, 2}, {3}, DType::i32)), Error);
  CHECK_THROWS_AS(ops::cross_entropy(x, Tensor::from_ints({0, 1, 2, 1}, {4}, DType::i32), 7), Error);
  CHECK_NOTHROW(ops::cross_entropy(x, Tensor::from_ints({0, -1, 5, 1}, {4}, DType::i32)));
}

TEST_CASE("cross_entropy: all rows ignored gives zero loss and zero gradient", "[ops][cross_entropy]") {
  Tensor x = randn({3, 5}, DType::f64, Device::cpu(), 41);
  x.set_requires_grad(true);
  Tensor t = Tensor::from_ints({-1, -1, -1}, {3}, DType::i32);
  Tensor loss = run_with_backward(x, t, 0, 1.0);
  CHECK(loss.to_doubles()[0] == 0.0);
  for (double g : grad_of(x).to_doubles()) CHECK(g == 0.0);
}

TEST_CASE("cross_entropy CUDA matches CPU", "[gpu][cross_entropy]") {
  UM_REQUIRE_GPU();
  PoisonArena poison(Device::cuda());
  struct Case {
    int64_t n, vp, valid;
  };
  // GPT-2's padded vocabulary; a small one with no padding; an odd width (unvectorised path).
  for (Case cs : {Case{37, 50304, 50257}, Case{5, 1000, 0}, Case{3, 77, 70}}) {
    int64_t valid = cs.valid > 0 ? cs.valid : cs.vp;
    std::vector<int64_t> ignored = {1};
    if (cs.n > 10) ignored.push_back(cs.n - 3);
    Tensor t = make_targets(cs.n, valid, ignored, 50 + cs.n);
    Tensor tg = t.to(Device::cuda());
    for (DType dt : {DType::f32, DType::bf16}) {
      INFO("N=" << cs.n << " Vp=" << cs.vp << " valid=" << cs.valid << " dtype=" << dtype_name(dt));
      // Logits rounded to dt, so the f32 CPU reference sees exactly the GPU's inputs.
      std::vector<double> xv = randn({cs.n, cs.vp}, dt, Device::cpu(), 60 + cs.n, 2.0).to_doubles();
      const double dloss = 0.75;
      Tensor xc = Tensor::from_doubles(xv, {cs.n, cs.vp}, DType::f32);
      xc.set_requires_grad(true);
      Tensor ref_loss = run_with_backward(xc, t, cs.valid, dloss);
      Tensor ref_grad = grad_of(xc);
      double tol_grad = dt == DType::f32 ? kTolF32 : kTolBF16;

      // In-place path.
      Tensor xg = Tensor::from_doubles(xv, {cs.n, cs.vp}, dt, Device::cuda());
      xg.set_requires_grad(true);
      Tensor loss = run_with_backward(xg, tg, cs.valid, dloss);
      CHECK(loss.dtype() == DType::f32);
      CHECK(rel_error(loss, ref_loss) < kTolF32);
      Tensor grad = grad_of(xg);
      REQUIRE(grad.defined());
      CHECK(grad.data() == xg.data());
      CHECK(rel_error(grad.to_doubles(), ref_grad.to_doubles()) < tol_grad);

      // Accumulating path, into a gradient already written this step.
      Tensor xa = Tensor::from_doubles(xv, {cs.n, cs.vp}, dt, Device::cuda());
      xa.set_requires_grad(true);
      Tensor g0 = randn({cs.n, cs.vp}, dt, Device::cpu(), 70 + cs.n, 1e-4);
      xa.set_grad(g0.to(Device::cuda()));
      xa.impl()->grad_ready = true;
      Tensor loss_a = run_with_backward(xa, tg, cs.valid, dloss);
      CHECK(rel_error(loss_a, ref_loss) < kTolF32);
      std::vector<double> expect = ref_grad.to_doubles(), base = g0.to_doubles();
      for (size_t i = 0; i < expect.size(); ++i) expect[i] += base[i];
      CHECK(rel_error(grad_of(xa).to_doubles(), expect) < tol_grad);
      CHECK(rel_error(xa.to_doubles(), xv) == 0.0);
    }
  }
  // Out-of-range targets: the device flag names the row.
  Tensor x = randn({6, 64}, DType::f32, Device::cuda(), 80);
  Tensor bad = Tensor::from_ints({0, 1, 2, 3, 4, 60}, {6}, DType::i32, Device::cuda());
  CHECK_THROWS_WITH(ops::cross_entropy(x, bad, 50), Catch::Contains("targets row 5"));
  CHECK_NOTHROW(ops::cross_entropy(x, bad));
}
