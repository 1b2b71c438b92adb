#include <algorithm>
#include <cmath>

#include "testing.h"
#include "ultramem/ops/dropout.h"

using namespace um;
using namespace um::testing;

namespace {

Tensor ones(int64_t n, DType dt, Device dev = Device::cpu()) {
  return Tensor::from_doubles(std::vector<double>(size_t(n), 1.0), {n}, dt, dev);
}

size_t count_zeros(const std::vector<double>& v) {
  size_t z = 0;
  for (double x : v) z += x == 0.0;
  return z;
}

}  // namespace

TEST_CASE("dropout: p = 0 is the identity, p outside [0, 1) is an Error", "[ops][dropout]") {
  Tensor x = randn({4, 5}, DType::f32, Device::cpu(), 1);
  CHECK(ops::dropout(x, 0.f, 1, 0).same(x));
  CHECK_THROWS_WITH(ops::dropout(x, 1.f, 1, 0), Catch::Contains("dropout: p"));
  CHECK_THROWS_AS(ops::dropout(x, -0.1f, 1, 0), Error);
}

TEST_CASE("dropout: replayable mask, rate and expected value", "[ops][dropout]") {
  PoisonArena poison(Device::cpu());
  const int64_t n = 100000;
  for (float p : {0.1f, 0.5f, 0.9f}) {
    INFO("p=" << p);
    Tensor x = ones(n, DType::f64);
    std::vector<double> y = ops::dropout(x, p, 1234, 77).to_doubles();
    CHECK(ops::dropout(x, p, 1234, 77).to_doubles() == y);  // same (seed, offset): same output
    CHECK(ops::dropout(x, p, 1235, 77).to_doubles() != y);
    CHECK(ops::dropout(x, p, 1234, 78).to_doubles() != y);
    // Offsets index elements: the mask of [offset 77 + 10, ...) is the tail of the mask at offset 77.
    std::vector<double> tail = ops::dropout(ones(n - 10, DType::f64), p, 1234, 87).to_doubles();
    CHECK(std::equal(tail.begin(), tail.end(), y.begin() + 10));

    const double sd = std::sqrt(double(p) * (1 - p) / double(n));  // of the zero fraction
    const double zero_fraction = double(count_zeros(y)) / double(n);
    CHECK(std::abs(zero_fraction - p) < 5 * sd);
    double mean = 0;
    size_t neither = 0;  // elements that are neither dropped nor scaled by 1 / (1 - p)
    for (double v : y) {
      neither += v != 0.0 && std::abs(v * (1.0 - double(p)) - 1.0) > 1e-6;
      mean += v;
    }
    CHECK(neither == 0);
    mean /= double(n);
    CHECK(std::abs(mean - 1.0) < 5 * sd / (1 - p));  // inverted dropout keeps E[y] = x
  }
}

TEST_CASE("dropout: float64 gradient and the backward uses the forward's mask", "[ops][dropout]") {
  Tensor x = randn({6, 7}, DType::f64, Device::cpu(), 2);
  x.set_requires_grad(true);
  CHECK(gradcheck([](const std::vector<Tensor>& in) { return ops::dropout(in[0], 0.3f, 99, 5); }, {x}) <
        kTolGradcheck);

  PoisonArena poison(Device::cpu());
  Tensor dy = randn({6, 7}, DType::f64, Device::cpu(), 3);
  std::vector<double> y = ops::dropout(ones(42, DType::f64), 0.3f, 99, 5).to_doubles();
  Tensor dx = alloc_activation({6, 7}, DType::f64, Device::cpu());
  ops::dropout_apply(dy, 0.3f, 99, 5, dx, false);
  std::vector<double> vdx = dx.to_doubles(), vdy = dy.to_doubles();
  for (size_t i = 0; i < y.size(); ++i) CHECK(vdx[i] == Approx(y[i] * vdy[i]).epsilon(1e-14).margin(1e-300));
  ops::dropout_apply(dy, 0.3f, 99, 5, dx, true);  // accumulate doubles it
  std::vector<double> twice = dx.to_doubles();
  for (size_t i = 0; i < y.size(); ++i) CHECK(twice[i] == Approx(2 * vdx[i]).epsilon(1e-14).margin(1e-300));
}

TEST_CASE("dropout CUDA mask is bit-identical to the CPU's", "[gpu][dropout]") {
  UM_REQUIRE_GPU();
  PoisonArena poison(Device::cuda());
  for (int64_t n : {1, 37, 100003}) {
    for (float p : {0.1f, 0.5f}) {
      Tensor x = randn({n}, DType::f32, Device::cpu(), uint64_t(n));
      Tensor y = ops::dropout(x, p, 4242, 1000003);
      INFO("n=" << n << " p=" << p);
      // f32: identical bits (same mask, same float multiply).
      CHECK(ops::dropout(x.to(Device::cuda()), p, 4242, 1000003).to_doubles() == y.to_doubles());
      // bf16: same zeros, values within bf16 rounding.
      Tensor xb = Tensor::from_doubles(x.to_doubles(), {n}, DType::bf16, Device::cuda());
      Tensor yb = ops::dropout(xb, p, 4242, 1000003);
      std::vector<double> vb = yb.to_doubles(), vy = y.to_doubles();
      bool same_zeros = true;
      for (size_t i = 0; i < vy.size(); ++i) same_zeros &= (vb[i] == 0.0) == (vy[i] == 0.0);
      CHECK(same_zeros);
      CHECK(rel_error(vb, vy) < kTolBF16);
      // Backward: the same mask applied to dy, with accumulate.
      for (DType dt : {DType::f32, DType::bf16}) {
        Tensor dy = randn({n}, DType::f32, Device::cpu(), uint64_t(n) + 1);
        Tensor prior = randn({n}, DType::f32, Device::cpu(), uint64_t(n) + 2);
        Tensor ref = Tensor::empty({n}, DType::f32);
        ops::dropout_apply(dy, p, 4242, 1000003, ref, false);
        Tensor gdx = alloc_activation({n}, dt, Device::cuda());
        Tensor gdy = Tensor::from_doubles(dy.to_doubles(), {n}, dt, Device::cuda());
        ops::dropout_apply(gdy, p, 4242, 1000003, gdx, false);
        CHECK(rel_error(gdx, ref) < (dt == DType::f32 ? kTolF32 : kTolBF16));
        Tensor acc = Tensor::from_doubles(prior.to_doubles(), {n}, dt, Device::cuda());
        ops::dropout_apply(gdy, p, 4242, 1000003, acc, true);
        std::vector<double> expect = prior.to_doubles(), vr = ref.to_doubles();
        for (size_t i = 0; i < expect.size(); ++i) expect[i] += vr[i];
        CHECK(rel_error(acc.to_doubles(), expect) < (dt == DType::f32 ? kTolF32 : kTolBF16));
      }
    }
  }
  arena_for(Device::cuda()).reset();
}
