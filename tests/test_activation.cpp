#include <cmath>
#include <utility>
#include <vector>

#include "testing.h"
#include "ultramem/ops/activation.h"
#include "ultramem/ops/elementwise.h"

using namespace um;
using namespace um::testing;

namespace {

double naive_gelu(double x) {
  const double pi = 3.14159265358979323846;
  return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / pi) * (x + 0.044715 * x * x * x)));
}

// silu(gate) * up for x [rows, 2h] = [gate | up].
std::vector<double> naive_swiglu(const std::vector<double>& x, int64_t h) {
  std::vector<double> y(x.size() / 2);
  for (size_t r = 0; r < y.size() / size_t(h); ++r)
    for (int64_t k = 0; k < h; ++k) {
      double g = x[r * 2 * size_t(h) + size_t(k)], u = x[r * 2 * size_t(h) + size_t(h + k)];
      y[r * size_t(h) + size_t(k)] = g / (1.0 + std::exp(-g)) * u;
    }
  return y;
}

std::vector<double> plus(std::vector<double> a, const std::vector<double>& b) {
  for (size_t i = 0; i < a.size(); ++i) a[i] += b[i];
  return a;
}

Tensor arena_copy(const Tensor& t, DType dt, Device dev) {
  Tensor out = alloc_activation(t.shape(), dt, dev);
  out.copy_from(convert(t, dt, dev));
  return out;
}

}  // namespace

TEST_CASE("gelu: values against the tanh formula", "[ops][activation]") {
  PoisonArena poison(Device::cpu());
  std::vector<double> v = {-12.0, -3.0, -1.0, -0.25, 0.0, 0.1, 0.5, 1.0, 2.5, 9.0, 40.0};
  for (DType dt : {DType::f32, DType::f64}) {
    Tensor x = Tensor::from_doubles(v, {int64_t(v.size())}, dt);
    std::vector<double> y = ops::gelu(x).to_doubles(), xs = x.to_doubles();
    for (size_t i = 0; i < v.size(); ++i) {
      INFO("x=" << xs[i] << " dtype=" << dtype_name(dt));
      CHECK(y[i] == Approx(naive_gelu(xs[i])).epsilon(dt == DType::f64 ? 1e-14 : 1e-6).margin(1e-30));
    }
  }
}

TEST_CASE("swiglu: values against silu(gate) * up", "[ops][activation]") {
  PoisonArena poison(Device::cpu());
  for (int64_t h : {1, 5, 33}) {
    for (DType dt : {DType::f32, DType::f64}) {
      Tensor x = randn({2, 3, 2 * h}, dt, Device::cpu(), uint64_t(h), 3.0);
      Tensor y = ops::swiglu(x);
      REQUIRE(y.shape() == Shape({2, 3, h}));
      INFO("h=" << h << " dtype=" << dtype_name(dt));
      CHECK(rel_error(y.to_doubles(), naive_swiglu(x.to_doubles(), h)) < (dt == DType::f64 ? 1e-14 : 1e-6));
    }
  }
  CHECK_THROWS_WITH(ops::swiglu(randn({2, 7}, DType::f32, Device::cpu(), 1)), Catch::Contains("swiglu: x"));
}

TEST_CASE("silu_mul: values against silu(gate) * up, shape and dtype checks", "[ops][activation]") {
  PoisonArena poison(Device::cpu());
  for (DType dt : {DType::f32, DType::f64}) {
    Tensor g = randn({3, 7}, dt, Device::cpu(), 50, 3.0), u = randn({3, 7}, dt, Device::cpu(), 51);
    Tensor y = ops::silu_mul(g, u);
    REQUIRE(y.shape() == g.shape());
    std::vector<double> gs = g.to_doubles(), us = u.to_doubles(), ref(gs.size());
    for (size_t i = 0; i < gs.size(); ++i) ref[i] = gs[i] / (1.0 + std::exp(-gs[i])) * us[i];
    INFO("dtype=" << dtype_name(dt));
    CHECK(rel_error(y.to_doubles(), ref) < (dt == DType::f64 ? 1e-14 : 1e-6));
  }
  Tensor g = randn({3, 7}, DType::f32, Device::cpu(), 52);
  CHECK_THROWS_WITH(ops::silu_mul(g, randn({3, 6}, DType::f32, Device::cpu(), 53)), Catch::Contains("silu_mul: up"));
  CHECK_THROWS_WITH(ops::silu_mul(g, randn({3, 7}, DType::f64, Device::cpu(), 54)), Catch::Contains("silu_mul: up"));
}

TEST_CASE("silu_mul: float64 gradients of gate and up, and of silu_mul(x, x)", "[ops][activation]") {
  Tensor g = randn({4, 9}, DType::f64, Device::cpu(), 55, 2.0), u = randn({4, 9}, DType::f64, Device::cpu(), 56);
  g.set_requires_grad(true);
  u.set_requires_grad(true);
  CHECK(gradcheck([](const std::vector<Tensor>& in) { return ops::silu_mul(in[0], in[1]); }, {g, u}) <
        kTolGradcheck);
  CHECK(gradcheck([](const std::vector<Tensor>& in) { return ops::silu_mul(in[0], in[0]); }, {g}) < kTolGradcheck);
  // Only one input differentiable: the other gradient is not requested.
  Tensor fixed = randn({4, 9}, DType::f64, Device::cpu(), 57);
  CHECK(gradcheck([&](const std::vector<Tensor>& in) { return ops::silu_mul(fixed, in[0]); }, {u}) < kTolGradcheck);
}

TEST_CASE("silu_mul backward: accumulate, and either gradient alone", "[ops][activation]") {
  PoisonArena poison(Device::cpu());
  const Shape s{5, 6};
  Tensor g = randn(s, DType::f64, Device::cpu(), 60), u = randn(s, DType::f64, Device::cpu(), 61);
  Tensor dy = randn(s, DType::f64, Device::cpu(), 62);
  Tensor fg = alloc_activation(s, DType::f64, Device::cpu()), fu = alloc_activation(s, DType::f64, Device::cpu());
  ops::silu_mul_backward(g, u, dy, fg, false, fu, false);
  Tensor pg = randn(s, DType::f64, Device::cpu(), 63), pu = randn(s, DType::f64, Device::cpu(), 64);
  Tensor ag = alloc_activation(s, DType::f64, Device::cpu()), au = alloc_activation(s, DType::f64, Device::cpu());
  ag.copy_from(pg);
  au.copy_from(pu);
  ops::silu_mul_backward(g, u, dy, ag, true, Tensor(), false);
  ops::silu_mul_backward(g, u, dy, Tensor(), false, au, true);
  CHECK(rel_error(ag.to_doubles(), plus(pg.to_doubles(), fg.to_doubles())) < 1e-14);
  CHECK(rel_error(au.to_doubles(), plus(pu.to_doubles(), fu.to_doubles())) < 1e-14);
}

TEST_CASE("gelu and swiglu: float64 gradients", "[ops][activation]") {
  Tensor x = randn({3, 10}, DType::f64, Device::cpu(), 20, 2.0);
  x.set_requires_grad(true);
  CHECK(gradcheck([](const std::vector<Tensor>& in) { return ops::gelu(in[0]); }, {x}) < kTolGradcheck);
  CHECK(gradcheck([](const std::vector<Tensor>& in) { return ops::swiglu(in[0]); }, {x}) < kTolGradcheck);
  // x feeds gelu and the residual add: its gradient accumulates across the two backward nodes.
  CHECK(gradcheck([](const std::vector<Tensor>& in) { return ops::swiglu(ops::add(ops::gelu(in[0]), in[0])); },
                  {x}) < kTolGradcheck);
}

TEST_CASE("activation backward kernels honour accumulate", "[ops][activation]") {
  PoisonArena poison(Device::cpu());
  Tensor x = randn({4, 6}, DType::f64, Device::cpu(), 30);
  Tensor dy = randn({4, 6}, DType::f64, Device::cpu(), 31), dyh = randn({4, 3}, DType::f64, Device::cpu(), 32);
  Tensor prior = randn({4, 6}, DType::f64, Device::cpu(), 33);
  for (bool swiglu : {false, true}) {
    Tensor fresh = alloc_activation({4, 6}, DType::f64, Device::cpu());
    Tensor acc = alloc_activation({4, 6}, DType::f64, Device::cpu());
    acc.copy_from(prior);
    if (swiglu) {
      ops::swiglu_backward(x, dyh, fresh, false);
      ops::swiglu_backward(x, dyh, acc, true);
    } else {
      ops::gelu_backward(x, dy, fresh, false);
      ops::gelu_backward(x, dy, acc, true);
    }
    CHECK(rel_error(acc.to_doubles(), plus(prior.to_doubles(), fresh.to_doubles())) < 1e-14);
  }
}

// CUDA vs CPU on dt-rounded inputs: forward, backward, and backward with accumulate = true.
static void compare_activation_on_gpu(bool swiglu, const Shape& xshape, DType dt) {
  const Device gpu = Device::cuda(), cpu = Device::cpu();
  const double tol = dt == DType::f32 ? kTolF32 : kTolBF16;
  Shape yshape = xshape;
  if (swiglu) yshape[-1] /= 2;
  const uint64_t seed = uint64_t(xshape.numel());
  Tensor x = rounded(randn(xshape, DType::f32, cpu, seed, 2.5), dt);
  Tensor dy = rounded(randn(yshape, DType::f32, cpu, seed + 1), dt);
  Tensor prior = rounded(randn(xshape, DType::f32, cpu, seed + 2), dt);
  Tensor y = Tensor::empty(yshape, DType::f32), dx = Tensor::empty(xshape, DType::f32);
  Tensor gx = arena_copy(x, dt, gpu), gdy = arena_copy(dy, dt, gpu), gy = alloc_activation(yshape, dt, gpu);
  Tensor gdx = alloc_activation(xshape, dt, gpu), gacc = arena_copy(prior, dt, gpu);
  if (swiglu) {
    ops::swiglu_forward(x, y);
    ops::swiglu_backward(x, dy, dx, false);
    ops::swiglu_forward(gx, gy);
    ops::swiglu_backward(gx, gdy, gdx, false);
    ops::swiglu_backward(gx, gdy, gacc, true);
  } else {
    ops::gelu_forward(x, y);
    ops::gelu_backward(x, dy, dx, false);
    ops::gelu_forward(gx, gy);
    ops::gelu_backward(gx, gdy, gdx, false);
    ops::gelu_backward(gx, gdy, gacc, true);
  }
  INFO((swiglu ? "swiglu" : "gelu") << " x=" << xshape.str() << " dtype=" << dtype_name(dt));
  CHECK(rel_error(gy, y) < tol);
  CHECK(rel_error(gdx, dx) < tol);
  CHECK(rel_error(gacc.to_doubles(), plus(prior.to_doubles(), dx.to_doubles())) < tol);
}

TEST_CASE("activation CUDA matches CPU", "[gpu][activation]") {
  UM_REQUIRE_GPU();
  PoisonArena poison(Device::cuda());
  for (DType dt : {DType::f32, DType::bf16}) {
    for (int64_t n : {1, 7, 37 * 33, 4099, 37 * 768}) compare_activation_on_gpu(false, Shape{n}, dt);
    for (int64_t h : {1, 7, 33, 768, 1000}) compare_activation_on_gpu(true, Shape{37, 2 * h}, dt);
    compare_activation_on_gpu(true, Shape{3, 5, 2 * 24}, dt);
  }
  arena_for(Device::cuda()).reset();
}

TEST_CASE("gelu and swiglu autograd on CUDA match CPU", "[gpu][activation]") {
  UM_REQUIRE_GPU();
  PoisonArena poison(Device::cuda());
  Tensor x = randn({37, 66}, DType::f32, Device::cpu(), 90);
  Tensor R = randn({37, 33}, DType::f32, Device::cpu(), 91);
  auto f = [](const std::vector<Tensor>& in) { return ops::swiglu(ops::gelu(in[0])); };
  std::vector<Tensor> cpu_in = {x}, gpu_in = {x.to(Device::cuda())};
  cpu_in[0].set_requires_grad(true);
  gpu_in[0].set_requires_grad(true);
  std::vector<Tensor> ref = grads_of_projection(f, cpu_in, R), out = grads_of_projection(f, gpu_in, R);
  CHECK(rel_error(out[0], ref[0]) < kTolF32);
}

// silu_mul's forward and backward of (g, u, dy) on the CPU, or on the GPU from dt copies of them (the
// copies kept for the caller's further calls).
struct SiluMulRun {
  Tensor g, u, dy, y, dgate, dup;
};
static SiluMulRun silu_mul_on_cpu(const Tensor& g, const Tensor& u, const Tensor& dy) {
  SiluMulRun r{g, u, dy, Tensor::empty(g.shape(), DType::f32), Tensor::empty(g.shape(), DType::f32),
               Tensor::empty(g.shape(), DType::f32)};
  ops::silu_mul_forward(g, u, r.y);
  ops::silu_mul_backward(g, u, dy, r.dgate, false, r.dup, false);
  return r;
}
static SiluMulRun silu_mul_on_gpu(const Tensor& g, const Tensor& u, const Tensor& dy, DType dt) {
  const Device gpu = Device::cuda();
  const Shape& shape = g.shape();
  SiluMulRun r{arena_copy(g, dt, gpu), arena_copy(u, dt, gpu), arena_copy(dy, dt, gpu),
               alloc_activation(shape, dt, gpu), alloc_activation(shape, dt, gpu), alloc_activation(shape, dt, gpu)};
  ops::silu_mul_forward(r.g, r.u, r.y);
  ops::silu_mul_backward(r.g, r.u, r.dy, r.dgate, false, r.dup, false);
  return r;
}

// silu_mul on CUDA vs CPU on dt-rounded inputs: forward, backward, accumulate, one gradient alone.
static void compare_silu_mul_on_gpu(const Shape& shape, DType dt) {
  const Device cpu = Device::cpu();
  const double tol = dt == DType::f32 ? kTolF32 : kTolBF16;
  const uint64_t seed = uint64_t(shape.numel()) + 500;
  Tensor g = rounded(randn(shape, DType::f32, cpu, seed, 2.5), dt);
  Tensor u = rounded(randn(shape, DType::f32, cpu, seed + 1), dt);
  Tensor dy = rounded(randn(shape, DType::f32, cpu, seed + 2), dt);
  Tensor prior = rounded(randn(shape, DType::f32, cpu, seed + 3), dt);
  const SiluMulRun ref = silu_mul_on_cpu(g, u, dy), out = silu_mul_on_gpu(g, u, dy, dt);
  Tensor gacc = arena_copy(prior, dt, Device::cuda());
  INFO("silu_mul shape=" << shape.str() << " dtype=" << dtype_name(dt));
  CHECK(rel_error(out.y, ref.y) < tol);
  CHECK(rel_error(out.dgate, ref.dgate) < tol);
  CHECK(rel_error(out.dup, ref.dup) < tol);
  ops::silu_mul_backward(out.g, out.u, out.dy, Tensor(), false, gacc, true);
  CHECK(rel_error(gacc.to_doubles(), plus(prior.to_doubles(), ref.dup.to_doubles())) < tol);
}

TEST_CASE("silu_mul CUDA matches CPU", "[gpu][activation]") {
  UM_REQUIRE_GPU();
  PoisonArena poison(Device::cuda());
  for (DType dt : {DType::f32, DType::bf16}) {
    for (int64_t n : {1, 7, 37 * 33, 4099}) compare_silu_mul_on_gpu(Shape{n}, dt);
    compare_silu_mul_on_gpu(Shape{37, 768}, dt);
    compare_silu_mul_on_gpu(Shape{3, 5, 24}, dt);
  }
  arena_for(Device::cuda()).reset();
}

// The device sigmoid is the SFU's ex2 and rcp with no range handling of their own: gates where e^-g
// underflows, overflows or is denormal must still give sigmoid 0 or 1 and finite gradients, as on the CPU.
TEST_CASE("silu_mul CUDA matches CPU at extreme gates", "[gpu][activation]") {
  UM_REQUIRE_GPU();
  PoisonArena poison(Device::cuda());
  const std::vector<double> gates = {-1e30, -100, -89, -88, -87, -40, -20, -10, -1, -1e-20, 0,
                                     1e-20, 1,     10,  20,  40,  87,  88,  89,  100, 1e30};
  const int64_t n = int64_t(gates.size());
  const Tensor g = Tensor::from_doubles(gates, {n}, DType::f32);
  const Tensor u = Tensor::from_doubles(std::vector<double>(size_t(n), 1.5), {n}, DType::f32);
  const Tensor dy = Tensor::from_doubles(std::vector<double>(size_t(n), -0.75), {n}, DType::f32);
  const SiluMulRun ref = silu_mul_on_cpu(g, u, dy), out = silu_mul_on_gpu(g, u, dy, DType::f32);
  const std::vector<std::pair<std::vector<double>, std::vector<double>>> pairs = {
      {out.y.to_doubles(), ref.y.to_doubles()},
      {out.dgate.to_doubles(), ref.dgate.to_doubles()},
      {out.dup.to_doubles(), ref.dup.to_doubles()}};
  for (size_t k = 0; k < pairs.size(); ++k)
    for (int64_t i = 0; i < n; ++i) {
      const double got = pairs[k].first[size_t(i)], want = pairs[k].second[size_t(i)];
      INFO("output " << (k == 0 ? "y" : k == 1 ? "dgate" : "dup") << " gate=" << gates[size_t(i)] << " cuda=" << got
                     << " cpu=" << want);
      REQUIRE(std::isfinite(got));
      CHECK(std::fabs(got - want) <= 1e-5 * (1.0 + std::fabs(want)));
    }
  arena_for(Device::cuda()).reset();
}

TEST_CASE("silu_mul autograd on CUDA matches CPU", "[gpu][activation]") {
  UM_REQUIRE_GPU();
  PoisonArena poison(Device::cuda());
  Tensor g = randn({37, 33}, DType::f32, Device::cpu(), 92), u = randn({37, 33}, DType::f32, Device::cpu(), 93);
  Tensor R = randn({37, 33}, DType::f32, Device::cpu(), 94);
  auto f = [](const std::vector<Tensor>& in) { return ops::silu_mul(in[0], in[1]); };
  std::vector<Tensor> cpu_in = {g, u}, gpu_in = {g.to(Device::cuda()), u.to(Device::cuda())};
  for (auto& t : cpu_in) t.set_requires_grad(true);
  for (auto& t : gpu_in) t.set_requires_grad(true);
  std::vector<Tensor> ref = grads_of_projection(f, cpu_in, R), out = grads_of_projection(f, gpu_in, R);
  CHECK(rel_error(out[0], ref[0]) < kTolF32);
  CHECK(rel_error(out[1], ref[1]) < kTolF32);
}
