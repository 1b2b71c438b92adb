#include <cmath>
#include <complex>

#include "testing.h"
#include "ultramem/ops/elementwise.h"
#include "ultramem/ops/rope.h"

using namespace um;
using namespace um::testing;

namespace {

// The rotation written out as complex multiplication: (x_i + i x_{i+D/2}) * e^{i t theta^(-2i/D)}.
std::vector<double> naive_rope(const std::vector<double>& x, int64_t B, int64_t T, int64_t H, int64_t Hkv,
                               int64_t D, double theta) {
  std::vector<double> y = x;
  const int64_t row = (H + 2 * Hkv) * D;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t head = 0; head < H + Hkv; ++head)
        for (int64_t i = 0; i < D / 2; ++i) {
          const int64_t at = (b * T + t) * row + head * D + i;
          std::complex<double> z(x[at], x[at + D / 2]);
          z *= std::polar(1.0, double(t) / std::pow(theta, 2.0 * double(i) / double(D)));
          y[at] = z.real();
          y[at + D / 2] = z.imag();
        }
  return y;
}

}  // namespace

TEST_CASE("rope: values match the complex rotation, v untouched", "[ops][rope]") {
  const int64_t B = 2, T = 7, H = 4, Hkv = 2, D = 8;
  Tensor x = randn({B, T, (H + 2 * Hkv) * D}, DType::f64, Device::cpu(), 1);
  Tensor y = ops::rope(x, H, Hkv, 500.f);
  std::vector<double> expect = naive_rope(x.to_doubles(), B, T, H, Hkv, D, 500.0);
  CHECK(rel_error(y.to_doubles(), expect) < 1e-14);
  // Position 0 is the identity and v heads are copied exactly.
  std::vector<double> vx = x.to_doubles(), vy = y.to_doubles();
  const int64_t row = (H + 2 * Hkv) * D;
  for (int64_t c = 0; c < row; ++c) CHECK(vy[c] == vx[c]);
  for (int64_t n = 0; n < B * T; ++n)
    for (int64_t c = (H + Hkv) * D; c < row; ++c) CHECK(vy[n * row + c] == vx[n * row + c]);
  // f32 agrees with f64.
  Tensor y32 = ops::rope(Tensor::from_doubles(vx, x.shape(), DType::f32), H, Hkv, 500.f);
  CHECK(rel_error(y32.to_doubles(), expect) < kTolF32);
}

TEST_CASE("rope: backward undoes forward; float64 gradient", "[ops][rope]") {
  const int64_t B = 2, T = 5, H = 2, Hkv = 1, D = 6;
  Tensor x = randn({B, T, (H + 2 * Hkv) * D}, DType::f64, Device::cpu(), 2);
  Tensor y = Tensor::empty(x.shape(), DType::f64);
  Tensor back = Tensor::empty(x.shape(), DType::f64);
  ops::rope_forward(x, y, H, Hkv, 10000.f);
  ops::rope_backward(y, back, H, Hkv, 10000.f, false);
  CHECK(rel_error(back, x) < 1e-14);
  // accumulate adds to what is there.
  ops::rope_backward(y, back, H, Hkv, 10000.f, true);
  std::vector<double> twice = x.to_doubles();
  for (auto& v : twice) v *= 2;
  CHECK(rel_error(back.to_doubles(), twice) < 1e-14);

  x.set_requires_grad(true);
  double err = gradcheck([&](const std::vector<Tensor>& in) { return ops::rope(in[0], H, Hkv, 10000.f); }, {x});
  CHECK(err < kTolGradcheck);
}

TEST_CASE("rope: argument errors", "[ops][rope]") {
  Tensor odd = randn({1, 3, 4 * 5}, DType::f32, Device::cpu(), 3);  // H=2, Hkv=1 -> D = 5
  CHECK_THROWS_AS(ops::rope(odd, 2, 1), Error);
  Tensor bad_width = randn({1, 3, 18}, DType::f32, Device::cpu(), 4);  // not a multiple of 4 heads
  CHECK_THROWS_AS(ops::rope(bad_width, 2, 1), Error);
  CHECK_THROWS_AS(ops::rope(randn({12}, DType::f32, Device::cpu(), 5), 1, 1), Error);
}

TEST_CASE("rope CUDA matches CPU", "[gpu][rope]") {
  UM_REQUIRE_GPU();
  PoisonArena poison(Device::cuda());
  for (int64_t T : {1, 37, 300}) {
    const int64_t B = 2, H = 4, Hkv = 2, D = 64;
    const Shape shape{B, T, (H + 2 * Hkv) * D};
    Tensor x = randn(shape, DType::f32, Device::cpu(), 10 + T);
    Tensor dy = randn(shape, DType::f32, Device::cpu(), 20 + T);
    Tensor prior = randn(shape, DType::f32, Device::cpu(), 30 + T);
    for (DType dt : {DType::f32, DType::bf16}) {
      const double tol = dt == DType::f32 ? kTolF32 : kTolBF16;
      // Inputs rounded to dt, so the reference sees exactly what the GPU sees.
      Tensor gx = Tensor::empty(shape, dt, Device::cuda()), gdy = Tensor::empty(shape, dt, Device::cuda());
      ops::cast_forward(x.to(Device::cuda()), gx);
      ops::cast_forward(dy.to(Device::cuda()), gdy);
      Tensor cx = Tensor::from_doubles(gx.to_doubles(), shape, DType::f32);
      Tensor cdy = Tensor::from_doubles(gdy.to_doubles(), shape, DType::f32);

      Tensor y = ops::rope(gx, H, Hkv, 10000.f);
      Tensor ref = ops::rope(cx, H, Hkv, 10000.f);
      double err = rel_error(y, ref);
      INFO("T=" << T << " dtype=" << dtype_name(dt) << " forward err=" << err);
      CHECK(err < tol);

      Tensor ref_dx = Tensor::empty(shape, DType::f32);
      ops::rope_backward(cdy, ref_dx, H, Hkv, 10000.f, false);
      Tensor dx = arena_for(Device::cuda()).alloc(shape, dt);  // poisoned
      ops::rope_backward(gdy, dx, H, Hkv, 10000.f, false);
      err = rel_error(dx, ref_dx);
      INFO("backward err=" << err);
      CHECK(err < tol);

      // accumulate into an f32 gradient (as a bf16 compute copy's master gradient would be).
      Tensor acc = prior.to(Device::cuda());
      ops::rope_backward(gdy, acc, H, Hkv, 10000.f, true);
      std::vector<double> expect = ref_dx.to_doubles(), vp = prior.to_doubles();
      for (size_t i = 0; i < expect.size(); ++i) expect[i] += vp[i];
      err = rel_error(acc.to_doubles(), expect);
      INFO("accumulate err=" << err);
      CHECK(err < tol);
    }
  }
  arena_for(Device::cuda()).reset();
}
