// Key-balance loss: value against the formula, float64 gradient check, CUDA vs CPU.
#include <algorithm>
#include <cmath>

#include "testing.h"
#include "ultramem/ops/memory_balance.h"

using namespace um;

namespace {

// Distinct random picks in [0, n) for every (t, h, side).
Tensor random_picks(int64_t T, int64_t H, int64_t n, int64_t knn, Device dev, uint64_t seed) {
  std::vector<int64_t> v;
  uint64_t s = seed;
  for (int64_t row = 0; row < T * H * 2; ++row) {
    std::vector<int64_t> perm(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) perm[size_t(i)] = i;
    for (int64_t i = n - 1; i > 0; --i) {
      s = s * 6364136223846793005ull + 1442695040888963407ull;
      std::swap(perm[size_t(i)], perm[size_t((s >> 33) % uint64_t(i + 1))]);
    }
    v.insert(v.end(), perm.begin(), perm.begin() + knn);
  }
  return Tensor::from_ints(v, {T, H, 2, knn}, DType::i32, dev);
}

double naive_loss(const Tensor& scores, const Tensor& u, const Tensor& v, const Tensor& rows) {
  const int64_t T = scores.dim(0), H = scores.dim(1), r = scores.dim(3), n = scores.dim(4), knn = rows.dim(3);
  auto s = scores.to_doubles();
  auto pk = rows.to_ints();
  std::vector<double> uv[2] = {u.defined() ? u.to_doubles() : std::vector<double>(size_t(H * r), 1.0),
                               v.defined() ? v.to_doubles() : std::vector<double>(size_t(H * r), 1.0)};
  double loss = 0;
  for (int side = 0; side < 2; ++side) {
    std::vector<double> p(size_t(n), 0.0), f(size_t(n), 0.0);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h) {
        std::vector<double> a(size_t(n), 0.0);
        for (int64_t q = 0; q < r; ++q)
          for (int64_t i = 0; i < n; ++i)
            a[size_t(i)] += uv[side][size_t(h * r + q)] * s[size_t((((t * H + h) * 2 + side) * r + q) * n + i)];
        double mx = *std::max_element(a.begin(), a.end()), z = 0;
        for (double x : a) z += std::exp(x - mx);
        for (int64_t i = 0; i < n; ++i) p[size_t(i)] += std::exp(a[size_t(i)] - mx) / z / double(T * H);
        for (int64_t k = 0; k < knn; ++k) f[size_t(pk[size_t(((t * H + h) * 2 + side) * knn + k)])] += 1.0 / double(T * H * knn);
      }
    for (int64_t i = 0; i < n; ++i) loss += double(n) * p[size_t(i)] * f[size_t(i)];
  }
  return loss;
}

}  // namespace

TEST_CASE("key-balance loss: value and float64 gradient check", "[memory]") {
  const int64_t T = 5, H = 2, r = 2, n = 11, knn = 3;
  for (bool tucker : {true, false}) {
    const int64_t rr = tucker ? r : 1;
    Tensor scores = testing::randn({T, H, 2, rr, n}, DType::f64, Device::cpu(), 11);
    Tensor u = tucker ? testing::randn({H, r}, DType::f32, Device::cpu(), 12) : Tensor();
    Tensor v = tucker ? testing::randn({H, r}, DType::f32, Device::cpu(), 13) : Tensor();
    Tensor rows = random_picks(T, H, n, knn, Device::cpu(), 14);
    const double got = ops::memory_key_balance(scores, u, v, rows, 0.7).to_doubles()[0];
    CHECK(std::abs(got - 0.7 * naive_loss(scores, u, v, rows)) < 1e-12);
    scores.set_requires_grad(true);
    testing::gradcheck([&](const std::vector<Tensor>& in) { return ops::memory_key_balance(in[0], u, v, rows, 0.7); },
                       {scores});
  }
}

TEST_CASE("key-balance loss: CUDA matches CPU", "[gpu][memory]") {
  UM_REQUIRE_GPU();
  const Device gpu = Device::cuda(0);
  for (int64_t n : {37, 1138}) {
    const int64_t T = 33, H = 2, r = 2, knn = 16;
    testing::PoisonArena poison(gpu);
    Tensor scores = testing::randn({T, H, 2, r, n}, DType::f32, Device::cpu(), 21);
    Tensor u = testing::randn({H, r}, DType::f32, Device::cpu(), 22), v = testing::randn({H, r}, DType::f32, Device::cpu(), 23);
    Tensor rows = random_picks(T, H, n, knn, Device::cpu(), 24);
    Tensor sg = scores.to(gpu), ug = u.to(gpu), vg = v.to(gpu), rg = rows.to(gpu);
    const double cl = ops::memory_key_balance(scores, u, v, rows, 1.0).to_doubles()[0];
    const double gl = ops::memory_key_balance(sg, ug, vg, rg, 1.0).to_doubles()[0];
    CHECK(std::abs(gl - cl) / cl < kTolF32 * 10);
    // Backward through the tape on both devices.
    auto grad_on = [&](const Tensor& s, const Tensor& uu, const Tensor& vv, const Tensor& rr) {
      s.set_requires_grad(true);
      s.set_grad(Tensor());
      Tape tape;
      TapeScope scope(tape);
      Tensor loss = ops::memory_key_balance(s, uu, vv, rr, 1.0);
      tape.backward(loss);
      return s.grad().to_doubles();
    };
    auto dc = grad_on(scores, u, v, rows), dg = grad_on(sg, ug, vg, rg);
    CHECK(testing::rel_error(dg, dc) < 1e-4);
  }
}
