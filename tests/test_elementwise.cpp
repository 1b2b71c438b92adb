#include "testing.h"
#include "ultramem/ops/elementwise.h"

using namespace um;
using namespace um::testing;

TEST_CASE("add: values and float64 gradient", "[ops][elementwise]") {
  Tensor a = randn({3, 5}, DType::f64, Device::cpu(), 1);
  Tensor b = randn({3, 5}, DType::f64, Device::cpu(), 2);
  Tensor y = ops::add(a, b);
  auto va = a.to_doubles(), vb = b.to_doubles(), vy = y.to_doubles();
  for (size_t i = 0; i < vy.size(); ++i) CHECK(vy[i] == va[i] + vb[i]);
  a.set_requires_grad(true);
  b.set_requires_grad(true);
  // a is used twice: its gradient must accumulate.
  double err = gradcheck([](const std::vector<Tensor>& in) { return ops::add(ops::add(in[0], in[1]), in[0]); },
                         {a, b});
  CHECK(err < kTolGradcheck);
}

TEST_CASE("reshape and cast pass gradients back", "[ops][elementwise]") {
  Tensor a = randn({4, 6}, DType::f64, Device::cpu(), 3);
  a.set_requires_grad(true);
  double err = gradcheck(
      [](const std::vector<Tensor>& in) {
        Tensor r = ops::reshape(in[0], {2, 12});
        return ops::add(r, ops::reshape(ops::cast(ops::cast(in[0], DType::f32), DType::f64), {2, 12}));
      },
      {a}, 1e-3, 1e-4);
  CHECK(err < 1e-4);  // the f32 round trip limits precision
}

TEST_CASE("backward_from seeds several outputs at once", "[ops][elementwise]") {
  Tensor a = randn({2, 3}, DType::f64, Device::cpu(), 4), b = randn({2, 3}, DType::f64, Device::cpu(), 5);
  Tensor g1 = randn({2, 3}, DType::f64, Device::cpu(), 6), g2 = randn({2, 3}, DType::f64, Device::cpu(), 7);
  a.set_requires_grad(true);
  b.set_requires_grad(true);
  Tape tape;
  {
    TapeScope scope(tape);
    Tensor y = ops::add(a, b), z = ops::add(a, a);
    tape.backward_from({{y, g1}, {z, g2}});
  }
  // da = g1 + 2 g2 (y and twice z), db = g1.
  auto da = a.grad().to_doubles(), db = b.grad().to_doubles(), v1 = g1.to_doubles(), v2 = g2.to_doubles();
  for (size_t i = 0; i < da.size(); ++i) {
    CHECK(std::abs(da[i] - (v1[i] + 2 * v2[i])) < 1e-12);
    CHECK(db[i] == v1[i]);
  }
  arena_for(Device::cpu()).reset();
}

TEST_CASE("elementwise CUDA matches CPU", "[gpu][elementwise]") {
  UM_REQUIRE_GPU();
  PoisonArena poison(Device::cuda());
  for (int64_t n : {1, 37, 4099}) {
    Tensor a = randn({n}, DType::f32, Device::cpu(), 10 + n);
    Tensor b = randn({n}, DType::f32, Device::cpu(), 20 + n);
    Tensor ref = ops::add(a, b);
    for (DType dt : {DType::f32, DType::bf16}) {
      Tensor ga = Tensor::empty({n}, dt, Device::cuda()), gb = Tensor::empty({n}, dt, Device::cuda());
      ops::cast_forward(a.to(Device::cuda()), ga);
      ops::cast_forward(b.to(Device::cuda()), gb);
      Tensor y = ops::add(ga, gb);
      double err = rel_error(y, ref);
      INFO("n=" << n << " dtype=" << dtype_name(dt) << " err=" << err);
      CHECK(err < (dt == DType::f32 ? kTolF32 : kTolBF16));
      Tensor acc = Tensor::empty({n}, DType::f32, Device::cuda());
      ops::accumulate(acc, y, false);
      ops::accumulate(acc, ga, true);
      std::vector<double> expect = ref.to_doubles(), va = a.to_doubles();
      for (size_t i = 0; i < expect.size(); ++i) expect[i] += va[i];
      CHECK(rel_error(acc.to_doubles(), expect) < (dt == DType::f32 ? kTolF32 : kTolBF16));
    }
  }
}

TEST_CASE("scale_rows: values and float64 gradient", "[ops][elementwise]") {
  Tensor x = randn({4, 7}, DType::f64, Device::cpu(), 3), s = randn({4}, DType::f64, Device::cpu(), 4);
  auto vx = x.to_doubles(), vs = s.to_doubles(), vy = ops::scale_rows(x, s).to_doubles();
  for (size_t i = 0; i < vy.size(); ++i) CHECK(vy[i] == vs[i / 7] * vx[i]);
  x.set_requires_grad(true);
  s.set_requires_grad(true);
  CHECK(gradcheck([](const std::vector<Tensor>& in) { return ops::scale_rows(in[0], in[1]); }, {x, s}) <
        kTolGradcheck);
  CHECK_THROWS_WITH(ops::scale_rows(x, randn({5}, DType::f64, Device::cpu(), 5)), Catch::Contains("scale_rows: s"));
  arena_for(Device::cpu()).reset();
}

TEST_CASE("scale_rows CUDA matches CPU, accumulate, deterministic", "[gpu][elementwise]") {
  UM_REQUIRE_GPU();
  PoisonArena poison(Device::cuda());
  for (int64_t cols : {1, 33, 408}) {
    const int64_t rows = 1031;
    const Tensor x = rounded(randn({rows, cols}, DType::f32, Device::cpu(), 30), DType::bf16);
    const Tensor dy = rounded(randn({rows, cols}, DType::f32, Device::cpu(), 31), DType::bf16);
    const Tensor s = randn({rows}, DType::f32, Device::cpu(), 32), dx0 = rounded(randn({rows, cols}, DType::f32, Device::cpu(), 33), DType::bf16);
    const Tensor ds0 = randn({rows}, DType::f32, Device::cpu(), 34);
    for (DType dt : {DType::f32, DType::bf16})
      for (bool acc : {false, true}) {
        INFO("cols " << cols << " " << dtype_name(dt) << " accumulate " << acc);
        auto run = [&](Device dev) {
          const DType t = dev.is_cuda() ? dt : DType::f32;
          Tensor gx = convert(x, t, dev), gdy = convert(dy, t, dev), gs = s.to(dev), y = nan_filled(x.shape(), t, dev);
          ops::scale_rows_forward(gx, gs, y);
          Tensor dx = acc ? convert(dx0, t, dev) : nan_filled(x.shape(), t, dev);
          Tensor ds = acc ? ds0.to(dev) : nan_filled(s.shape(), DType::f32, dev);
          ops::scale_rows_backward(gx, gs, gdy, GradSlot{dx, acc}, GradSlot{ds, acc});
          return std::vector<std::vector<double>>{y.to_doubles(), dx.to_doubles(), ds.to_doubles()};
        };
        const auto ref = run(Device::cpu()), gpu = run(Device::cuda()), again = run(Device::cuda());
        const double tol = dt == DType::f32 ? kTolF32 : kTolBF16;
        for (size_t i = 0; i < 3; ++i) CHECK(rel_error(gpu[i], ref[i]) < tol);
        for (size_t i = 0; i < 3; ++i) CHECK(gpu[i] == again[i]);
        arena_for(Device::cpu()).reset();
      }
  }
}
