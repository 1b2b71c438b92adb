#include <cmath>

#include "testing.h"
#include "ultramem/ops/norm.h"

using namespace um;
using namespace um::testing;

namespace {

// y = (x - mean) / sqrt(var + eps) * w + b per row (RMSNorm: mean taken as 0, var = mean(x^2)).
std::vector<double> naive_norm(const std::vector<double>& x, int64_t C, const Tensor& w, const Tensor& b, double eps,
                               bool centred) {
  std::vector<double> vw = w ? w.to_doubles() : std::vector<double>(size_t(C), 1.0);
  std::vector<double> vb = b ? b.to_doubles() : std::vector<double>(size_t(C), 0.0);
  std::vector<double> y(x.size());
  for (size_t r = 0; r < x.size() / size_t(C); ++r) {
    const double* xr = x.data() + r * size_t(C);
    double mean = 0, var = 0;
    if (centred) {
      for (int64_t c = 0; c < C; ++c) mean += xr[c];
      mean /= double(C);
    }
    for (int64_t c = 0; c < C; ++c) var += (xr[c] - mean) * (xr[c] - mean);
    var /= double(C);
    for (int64_t c = 0; c < C; ++c)
      y[r * size_t(C) + size_t(c)] = (xr[c] - mean) / std::sqrt(var + eps) * vw[size_t(c)] + vb[size_t(c)];
  }
  return y;
}

std::vector<double> plus(std::vector<double> a, const std::vector<double>& b) {
  for (size_t i = 0; i < a.size(); ++i) a[i] += b[i];
  return a;
}

// `t`'s values stored as `dt` on `dev` (bf16 rounds them).
// `t` rounded to `dt` and back to an f32 CPU tensor: the exact values a `dt` kernel sees.
// An arena tensor on `dev` (poisoned in [gpu] tests) holding `t`'s values as `dt`.
Tensor arena_copy(const Tensor& t, DType dt, Device dev) {
  Tensor out = alloc_activation(t.shape(), dt, dev);
  out.copy_from(convert(t, dt, dev));
  return out;
}

}  // namespace

TEST_CASE("layer_norm and rms_norm: values against the naive formula", "[ops][norm]") {
  PoisonArena poison(Device::cpu());
  for (int64_t C : {7, 33, 768}) {
    for (DType dt : {DType::f32, DType::f64}) {
      Tensor x = randn({2, 3, C}, dt, Device::cpu(), uint64_t(C), 2.0);
      Tensor w = randn({C}, dt, Device::cpu(), uint64_t(C) + 1);
      Tensor b = randn({C}, dt, Device::cpu(), uint64_t(C) + 2);
      double tol = dt == DType::f64 ? 1e-12 : 1e-6;
      for (int affine = 0; affine < 3; ++affine) {  // none, weight only, weight and bias
        Tensor wa = affine >= 1 ? w : Tensor(), ba = affine == 2 ? b : Tensor();
        INFO("C=" << C << " dtype=" << dtype_name(dt) << " affine=" << affine);
        Tensor y = ops::layer_norm(x, wa, ba, 1e-5f);
        REQUIRE(y.shape() == x.shape());
        CHECK(rel_error(y.to_doubles(), naive_norm(x.to_doubles(), C, wa, ba, double(1e-5f), true)) < tol);
        if (affine == 2) continue;
        Tensor z = ops::rms_norm(x, wa, 1e-6f);
        CHECK(rel_error(z.to_doubles(), naive_norm(x.to_doubles(), C, wa, Tensor(), double(1e-6f), false)) < tol);
      }
    }
  }
}

TEST_CASE("layer_norm: float64 gradients of x, weight and bias", "[ops][norm]") {
  for (int64_t C : {7, 33}) {
    Tensor x = randn({3, C}, DType::f64, Device::cpu(), 40 + uint64_t(C), 1.5);
    Tensor w = randn({C}, DType::f64, Device::cpu(), 41);
    Tensor b = randn({C}, DType::f64, Device::cpu(), 42);
    for (const Tensor* t : {&x, &w, &b}) t->set_requires_grad(true);
    INFO("C=" << C);
    CHECK(gradcheck([](const std::vector<Tensor>& in) { return ops::layer_norm(in[0], in[1], in[2]); }, {x, w, b}) <
          kTolGradcheck);
    // Without an affine transform, and with x used twice so its gradient accumulates.
    CHECK(gradcheck(
              [](const std::vector<Tensor>& in) {
                Tensor y = ops::layer_norm(in[0], Tensor(), Tensor());
                return ops::layer_norm(y, in[1], Tensor());
              },
              {x, w}) < kTolGradcheck);
  }
}

TEST_CASE("rms_norm: float64 gradients of x and weight", "[ops][norm]") {
  for (int64_t C : {7, 33}) {
    Tensor x = randn({4, C}, DType::f64, Device::cpu(), 50 + uint64_t(C));
    Tensor w = randn({C}, DType::f64, Device::cpu(), 51);
    x.set_requires_grad(true);
    w.set_requires_grad(true);
    INFO("C=" << C);
    CHECK(gradcheck([](const std::vector<Tensor>& in) { return ops::rms_norm(in[0], in[1]); }, {x, w}) <
          kTolGradcheck);
    CHECK(gradcheck([](const std::vector<Tensor>& in) { return ops::rms_norm(in[0], Tensor()); }, {x}) <
          kTolGradcheck);
  }
}

TEST_CASE("norm backward kernels honour accumulate", "[ops][norm]") {
  PoisonArena poison(Device::cpu());
  const int64_t rows = 5, C = 9;
  Tensor x = randn({rows, C}, DType::f64, Device::cpu(), 60);
  Tensor w = randn({C}, DType::f64, Device::cpu(), 61);
  Tensor b = randn({C}, DType::f64, Device::cpu(), 62);
  Tensor dy = randn({rows, C}, DType::f64, Device::cpu(), 63);
  Tensor y = Tensor::empty({rows, C}, DType::f64), mean = Tensor::empty({rows}, DType::f64),
         rstd = Tensor::empty({rows}, DType::f64);
  ops::layer_norm_forward(x, w, b, 1e-5f, y, mean, rstd);
  auto fresh = [](const Shape& s) { return alloc_activation(s, DType::f64, Device::cpu()); };
  GradSlot dx{fresh({rows, C}), false}, dw{fresh({C}), false}, db{fresh({C}), false};
  ops::layer_norm_backward(x, w, mean, rstd, dy, dx, dw, db);
  for (const GradSlot* s : {&dx, &dw, &db}) {
    Tensor prior = randn(s->grad.shape(), DType::f64, Device::cpu(), 64);
    GradSlot acc{fresh(s->grad.shape()), true};
    acc.grad.copy_from(prior);
    GradSlot none;
    ops::layer_norm_backward(x, w, mean, rstd, dy, s == &dx ? acc : none, s == &dw ? acc : none,
                             s == &db ? acc : none);
    CHECK(rel_error(acc.grad.to_doubles(), plus(prior.to_doubles(), s->grad.to_doubles())) < 1e-14);
  }
}

TEST_CASE("norm argument errors name the tensor", "[ops][norm]") {
  Tensor x = randn({2, 5}, DType::f32, Device::cpu(), 70);
  Tensor w4 = randn({4}, DType::f32, Device::cpu(), 71);
  Tensor w64 = randn({5}, DType::f64, Device::cpu(), 72);
  CHECK_THROWS_WITH(ops::layer_norm(x, w4, Tensor()), Catch::Contains("layer_norm: weight"));
  CHECK_THROWS_WITH(ops::rms_norm(x, w64), Catch::Contains("rms_norm: weight"));
  CHECK_THROWS_AS(ops::layer_norm(x, Tensor(), w4), Error);
}

// CUDA vs CPU on the same (dt-rounded) inputs: forward, statistics, backward, then accumulate = true.
static void compare_norm_on_gpu(bool layer, int64_t rows, int64_t C, DType dt, bool affine) {
  const Device gpu = Device::cuda(), cpu = Device::cpu();
  const double tol = dt == DType::f32 ? kTolF32 : kTolBF16;
  const uint64_t seed = uint64_t(C * 10 + rows);
  Tensor x = rounded(randn({rows, C}, DType::f32, cpu, seed, 3.0), dt);
  Tensor w = affine ? rounded(randn({C}, DType::f32, cpu, seed + 1), dt) : Tensor();
  Tensor b = affine && layer ? rounded(randn({C}, DType::f32, cpu, seed + 2), dt) : Tensor();
  Tensor dy = rounded(randn({rows, C}, DType::f32, cpu, seed + 3), dt);

  Tensor y = Tensor::empty({rows, C}, DType::f32), mean = Tensor::empty({rows}, DType::f32),
         rstd = Tensor::empty({rows}, DType::f32);
  Tensor dx = Tensor::empty({rows, C}, DType::f32), dw = Tensor::empty({C}, DType::f32),
         db = Tensor::empty({C}, DType::f32);
  GradSlot sdx{dx, false}, sdw{affine ? dw : Tensor(), false}, sdb{b ? db : Tensor(), false};
  if (layer) {
    ops::layer_norm_forward(x, w, b, 1e-5f, y, mean, rstd);
    ops::layer_norm_backward(x, w, mean, rstd, dy, sdx, sdw, sdb);
  } else {
    ops::rms_norm_forward(x, w, 1e-6f, y, rstd);
    ops::rms_norm_backward(x, w, rstd, dy, sdx, sdw);
  }

  Tensor gx = arena_copy(x, dt, gpu), gdy = arena_copy(dy, dt, gpu);
  Tensor gw = w ? arena_copy(w, dt, gpu) : Tensor(), gb = b ? arena_copy(b, dt, gpu) : Tensor();
  Tensor gy = alloc_activation({rows, C}, dt, gpu), gmean = alloc_activation({rows}, DType::f32, gpu),
         grstd = alloc_activation({rows}, DType::f32, gpu);
  GradSlot gdx{alloc_activation({rows, C}, dt, gpu), false};
  GradSlot gdw{affine ? alloc_activation({C}, DType::f32, gpu) : Tensor(), false};
  GradSlot gdb{b ? alloc_activation({C}, DType::f32, gpu) : Tensor(), false};
  auto backward = [&] {
    if (layer)
      ops::layer_norm_backward(gx, gw, gmean, grstd, gdy, gdx, gdw, gdb);
    else
      ops::rms_norm_backward(gx, gw, grstd, gdy, gdx, gdw);
  };
  if (layer)
    ops::layer_norm_forward(gx, gw, gb, 1e-5f, gy, gmean, grstd);
  else
    ops::rms_norm_forward(gx, gw, 1e-6f, gy, grstd);
  backward();

  INFO((layer ? "layer_norm" : "rms_norm") << " rows=" << rows << " C=" << C << " dtype=" << dtype_name(dt)
                                           << " affine=" << affine);
  CHECK(rel_error(gy, y) < tol);
  CHECK(rel_error(grstd, rstd) < kTolF32);
  if (layer) CHECK(rel_error(gmean.to_doubles(), mean.to_doubles()) < kTolF32);
  CHECK(rel_error(gdx.grad, dx) < tol);
  if (affine) CHECK(rel_error(gdw.grad, dw) < tol);
  if (b) CHECK(rel_error(gdb.grad, db) < tol);

  // accumulate = true adds onto what is there.
  Tensor px = rounded(randn({rows, C}, DType::f32, cpu, seed + 4), dt);
  Tensor pw = randn({C}, DType::f32, cpu, seed + 5), pb = randn({C}, DType::f32, cpu, seed + 6);
  gdx = {arena_copy(px, dt, gpu), true};
  if (affine) gdw = {arena_copy(pw, DType::f32, gpu), true};
  if (b) gdb = {arena_copy(pb, DType::f32, gpu), true};
  backward();
  CHECK(rel_error(gdx.grad.to_doubles(), plus(px.to_doubles(), dx.to_doubles())) < tol);
  if (affine) CHECK(rel_error(gdw.grad.to_doubles(), plus(pw.to_doubles(), dw.to_doubles())) < tol);
  if (b) CHECK(rel_error(gdb.grad.to_doubles(), plus(pb.to_doubles(), db.to_doubles())) < tol);

  // Parameter gradients are reduced in a fixed order: repeated runs are bit-identical.
  if (affine) {
    gdx.accumulate = gdw.accumulate = gdb.accumulate = false;
    backward();
    std::vector<double> first = gdw.grad.to_doubles();
    backward();
    CHECK(gdw.grad.to_doubles() == first);
  }
}

TEST_CASE("norm CUDA matches CPU", "[gpu][norm]") {
  UM_REQUIRE_GPU();
  PoisonArena poison(Device::cuda());
  for (DType dt : {DType::f32, DType::bf16})
    for (int64_t C : {7, 33, 768, 1000, 1030, 4096})
      for (bool layer : {true, false}) {
        compare_norm_on_gpu(layer, 37, C, dt, true);
        if (C == 33 || C == 1030) compare_norm_on_gpu(layer, 37, C, dt, false);
      }
  compare_norm_on_gpu(true, 1, 768, DType::bf16, true);
  compare_norm_on_gpu(true, 4500, 64, DType::f32, true);  // many row chunks in the weight gradient
  arena_for(Device::cuda()).reset();
  arena_for(Device::cpu()).reset();
}

TEST_CASE("layer_norm autograd on CUDA matches CPU", "[gpu][norm]") {
  UM_REQUIRE_GPU();
  PoisonArena poison(Device::cuda());
  const int64_t C = 33;
  Tensor x = randn({3, 5, C}, DType::f32, Device::cpu(), 80);
  Tensor w = randn({C}, DType::f32, Device::cpu(), 81), b = randn({C}, DType::f32, Device::cpu(), 82);
  Tensor R = randn({3, 5, C}, DType::f32, Device::cpu(), 83);
  auto f = [](const std::vector<Tensor>& in) { return ops::layer_norm(in[0], in[1], in[2]); };
  std::vector<Tensor> cpu_in = {x, w, b}, gpu_in = {x.to(Device::cuda()), w.to(Device::cuda()), b.to(Device::cuda())};
  for (auto& t : cpu_in) t.set_requires_grad(true);
  for (auto& t : gpu_in) t.set_requires_grad(true);
  std::vector<Tensor> ref = grads_of_projection(f, cpu_in, R), out = grads_of_projection(f, gpu_in, R);
  for (size_t k = 0; k < ref.size(); ++k) {
    INFO("input " << k);
    CHECK(rel_error(out[k], ref[k]) < kTolF32);
  }
}
