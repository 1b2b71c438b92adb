#include <cmath>
#include <iomanip>
#include <sstream>

#include "testing.h"
#include "ultramem/ops/attention.h"
#include "ultramem/ops/elementwise.h"
#include "ultramem/ops/rope.h"

using namespace um;
using namespace um::testing;

namespace {

struct Dims {
  int64_t B, T, H, Hkv, D;
  Shape qkv() const { return {B, T, (H + 2 * Hkv) * D}; }
  Shape y() const { return {B, T, H * D}; }
};

// Materialises every head's T x T score matrix, masks it, takes a row softmax and multiplies by V.
std::vector<double> naive_attention(const std::vector<double>& qkv, const Dims& d, double scale) {
  const int64_t row = (d.H + 2 * d.Hkv) * d.D, group = d.H / d.Hkv;
  std::vector<double> y(size_t(d.B * d.T * d.H * d.D), 0.0);
  for (int64_t b = 0; b < d.B; ++b)
    for (int64_t h = 0; h < d.H; ++h) {
      const int64_t g = h / group;
      auto at = [&](int64_t t, int64_t head, int64_t i) { return qkv[size_t((b * d.T + t) * row + head * d.D + i)]; };
      std::vector<double> S(size_t(d.T * d.T));
      for (int64_t i = 0; i < d.T; ++i)
        for (int64_t j = 0; j < d.T; ++j) {
          double s = 0;
          for (int64_t e = 0; e < d.D; ++e) s += at(i, h, e) * at(j, d.H + g, e);
          S[i * d.T + j] = j <= i ? s * scale : -INFINITY;
        }
      for (int64_t i = 0; i < d.T; ++i) {
        double m = -INFINITY, l = 0;
        for (int64_t j = 0; j < d.T; ++j) m = std::max(m, S[i * d.T + j]);
        for (int64_t j = 0; j < d.T; ++j) l += (S[i * d.T + j] = std::exp(S[i * d.T + j] - m));
        for (int64_t j = 0; j < d.T; ++j)
          for (int64_t e = 0; e < d.D; ++e)
            y[size_t((b * d.T + i) * d.H * d.D + h * d.D + e)] += S[i * d.T + j] / l * at(j, d.H + d.Hkv + g, e);
      }
    }
  return y;
}

// Values exactly representable in `dt`: what a GPU tensor of that dtype holds.
Tensor rounded_randn(const Shape& shape, DType dt, uint64_t seed) {
  Tensor r = randn(shape, DType::f32, Device::cpu(), seed);
  if (dt == DType::f32) return r;
  return Tensor::from_doubles(Tensor::from_doubles(r.to_doubles(), shape, dt).to_doubles(), shape, DType::f32);
}

// Relative error of each packed part (dq, dk, dv) of a qkv gradient, for diagnostics.
std::string part_errors(const Tensor& out, const Tensor& ref, const Dims& d) {
  std::vector<double> o = out.to_doubles(), r = ref.to_doubles();
  const int64_t row = (d.H + 2 * d.Hkv) * d.D;
  const int64_t bounds[4] = {0, d.H * d.D, (d.H + d.Hkv) * d.D, row};
  std::string s;
  for (int part = 0; part < 3; ++part) {
    std::vector<double> po, pr;
    for (int64_t n = 0; n < d.B * d.T; ++n)
      for (int64_t c = bounds[part]; c < bounds[part + 1]; ++c) {
        po.push_back(o[size_t(n * row + c)]);
        pr.push_back(r[size_t(n * row + c)]);
      }
    const double err = rel_error(po, pr);
    std::ostringstream os;
    os << (part == 0 ? " dq " : part == 1 ? " dk " : " dv ");
    if (std::isfinite(err))
      os << std::scientific << std::setprecision(2) << err;
    else
      os << "(zero reference)";  // e.g. dq at T = 1, exactly 0 on the CPU
    s += os.str();
  }
  return s;
}

}  // namespace

TEST_CASE("attention: CPU matches the materialised softmax", "[ops][attention]") {
  for (Dims d : {Dims{2, 9, 3, 3, 5}, Dims{1, 1, 2, 1, 4}, Dims{2, 17, 4, 2, 8}, Dims{1, 6, 6, 1, 3}}) {
    Tensor qkv = randn(d.qkv(), DType::f64, Device::cpu(), uint64_t(d.T * 10 + d.H));
    for (float scale : {-1.f, 0.3f}) {
      // The resolved scale is an f32 value, 1/sqrt(D) rounded.
      const double s = scale > 0 ? scale : double(float(1.0 / std::sqrt(double(d.D))));
      std::vector<double> expect = naive_attention(qkv.to_doubles(), d, s);
      Tensor y = ops::attention(qkv, d.H, d.Hkv, scale);
      INFO("T=" << d.T << " H=" << d.H << " Hkv=" << d.Hkv << " D=" << d.D << " scale=" << scale);
      CHECK(rel_error(y.to_doubles(), expect) < 1e-13);
      Tensor y32 = ops::attention(Tensor::from_doubles(qkv.to_doubles(), d.qkv(), DType::f32), d.H, d.Hkv, scale);
      CHECK(rel_error(y32.to_doubles(), expect) < kTolF32);
    }
    // lse is the log of the softmax denominator: row t of head h sums exp(s_tj - lse_t) to 1.
    Tensor y = Tensor::empty(d.y(), DType::f64), lse = Tensor::empty({d.B, d.H, d.T}, DType::f64);
    ops::attention_forward(qkv, y, lse, d.H, d.Hkv);
    std::vector<double> v = qkv.to_doubles(), l = lse.to_doubles();
    const int64_t row = (d.H + 2 * d.Hkv) * d.D;
    const double s = double(float(1.0 / std::sqrt(double(d.D))));
    for (int64_t h = 0; h < d.H; ++h) {
      const int64_t t = d.T - 1, g = h / (d.H / d.Hkv);
      double total = 0;
      for (int64_t j = 0; j <= t; ++j) {
        double dot = 0;
        for (int64_t e = 0; e < d.D; ++e) dot += v[size_t(t * row + h * d.D + e)] * v[size_t(j * row + (d.H + g) * d.D + e)];
        total += std::exp(s * dot - l[size_t(h * d.T + t)]);
      }
      CHECK(std::abs(total - 1.0) < 1e-12);
    }
  }
}

TEST_CASE("attention: float64 gradient", "[ops][attention]") {
  const Dims d{2, 5, 4, 2, 6};
  Tensor qkv = randn(d.qkv(), DType::f64, Device::cpu(), 7);
  qkv.set_requires_grad(true);
  double err = gradcheck([&](const std::vector<Tensor>& in) { return ops::attention(in[0], d.H, d.Hkv); }, {qkv});
  CHECK(err < kTolGradcheck);
  // With an explicit scale and RoPE in front (the transformer block's order).
  err = gradcheck([&](const std::vector<Tensor>& in) { return ops::attention(ops::rope(in[0], d.H, d.Hkv), d.H, d.Hkv, 0.7f); },
                  {qkv});
  CHECK(err < kTolGradcheck);
  // Multi-head (H == Hkv).
  const Dims m{1, 4, 2, 2, 3};
  Tensor qkv2 = randn(m.qkv(), DType::f64, Device::cpu(), 8);
  qkv2.set_requires_grad(true);
  err = gradcheck([&](const std::vector<Tensor>& in) { return ops::attention(in[0], m.H, m.Hkv); }, {qkv2});
  CHECK(err < kTolGradcheck);
}

TEST_CASE("attention: backward accumulates into an existing gradient", "[ops][attention]") {
  const Dims d{2, 6, 4, 2, 4};
  Tensor qkv = randn(d.qkv(), DType::f64, Device::cpu(), 9);
  Tensor dy = randn(d.y(), DType::f64, Device::cpu(), 10);
  Tensor y = Tensor::empty(d.y(), DType::f64), lse = Tensor::empty({d.B, d.H, d.T}, DType::f64);
  ops::attention_forward(qkv, y, lse, d.H, d.Hkv);
  Tensor fresh = Tensor::empty(d.qkv(), DType::f64);
  ops::attention_backward(qkv, y, lse, dy, fresh, d.H, d.Hkv, -1.f, false);
  Tensor prior = randn(d.qkv(), DType::f64, Device::cpu(), 11);
  Tensor acc = prior.to(Device::cpu());
  ops::attention_backward(qkv, y, lse, dy, acc, d.H, d.Hkv, -1.f, true);
  std::vector<double> expect = fresh.to_doubles(), p = prior.to_doubles();
  for (size_t i = 0; i < expect.size(); ++i) expect[i] += p[i];
  CHECK(rel_error(acc.to_doubles(), expect) < 1e-14);
}

TEST_CASE("attention: argument errors", "[ops][attention]") {
  Tensor qkv = randn({1, 4, 4 * 8}, DType::f32, Device::cpu(), 12);  // H=2, Hkv=1, D=8
  CHECK_NOTHROW(ops::attention(qkv, 2, 1));
  CHECK_THROWS_AS(ops::attention(qkv, 3, 2), Error);  // 3 not a multiple of 2
  CHECK_THROWS_AS(ops::attention(qkv, 3, 1), Error);  // 32 not a multiple of 5
  CHECK_THROWS_AS(ops::attention(randn({4, 32}, DType::f32, Device::cpu(), 13), 2, 1), Error);
  Tensor y = Tensor::empty({1, 4, 8}, DType::f32), lse = Tensor::empty({1, 2, 4}, DType::f32);
  CHECK_THROWS_AS(ops::attention_forward(qkv, y, lse, 2, 1), Error);  // y has the wrong width
}

namespace {

// CUDA vs CPU for one configuration: forward output, the qkv gradient through the tape (poisoned
// arena), and the accumulate = true path of the kernel-level backward.
void check_cuda_attention(const Dims& d, DType dt, double tol) {
  const uint64_t seed = uint64_t(d.T * 1000 + d.H * 100 + d.Hkv * 10 + d.D);
  Tensor cqkv = rounded_randn(d.qkv(), dt, seed);
  Tensor R = rounded_randn(d.y(), dt, seed + 1);
  Tensor gqkv = Tensor::empty(d.qkv(), dt, Device::cuda());
  ops::cast_forward(cqkv.to(Device::cuda()), gqkv);
  INFO("B=" << d.B << " T=" << d.T << " H=" << d.H << " Hkv=" << d.Hkv << " D=" << d.D << " " << dtype_name(dt));

  Tensor ref = ops::attention(cqkv, d.H, d.Hkv);
  Tensor out = ops::attention(gqkv, d.H, d.Hkv);
  double err = rel_error(out, ref);
  INFO("forward err=" << err);
  CHECK(err < tol);

  auto fwd = [&](const std::vector<Tensor>& in) { return ops::attention(in[0], d.H, d.Hkv); };
  cqkv.set_requires_grad(true);
  gqkv.set_requires_grad(true);
  Tensor ref_grad = grads_of_projection(fwd, {cqkv}, R)[0];
  Tensor grad = grads_of_projection(fwd, {gqkv}, R)[0];
  REQUIRE(grad.defined());
  err = rel_error(grad, ref_grad);
  INFO("dqkv err=" << err << part_errors(grad, ref_grad, d));
  CHECK(err < tol);

  // accumulate = true adds to a gradient already in the slot.
  Arena& arena = arena_for(Device::cuda());
  Tensor y = arena.alloc(d.y(), dt), lse = arena.alloc({d.B, d.H, d.T}, DType::f32);
  ops::attention_forward(gqkv, y, lse, d.H, d.Hkv);
  Tensor dy = Tensor::empty(d.y(), dt, Device::cuda());
  ops::cast_forward(R.to(Device::cuda()), dy);
  Tensor prior = rounded_randn(d.qkv(), dt, seed + 2);
  Tensor acc = Tensor::empty(d.qkv(), dt, Device::cuda());
  ops::cast_forward(prior.to(Device::cuda()), acc);
  ops::attention_backward(gqkv, y, lse, dy, acc, d.H, d.Hkv, -1.f, true);
  std::vector<double> expect = ref_grad.to_doubles(), p = prior.to_doubles();
  for (size_t i = 0; i < expect.size(); ++i) expect[i] += p[i];
  err = rel_error(acc.to_doubles(), expect);
  INFO("accumulate err=" << err);
  CHECK(err < tol);
  arena.reset();
  arena_for(Device::cpu()).reset();
}

}  // namespace

TEST_CASE("attention CUDA bf16 (tensor cores) matches CPU", "[gpu][attention]") {
  UM_REQUIRE_GPU();
  PoisonArena poison(Device::cuda());
  for (int64_t D : {64, 128})
    for (int64_t T : {1, 37, 130, 257})
      for (auto [H, Hkv] : {std::pair<int64_t, int64_t>{2, 2}, {4, 2}}) check_cuda_attention({2, T, H, Hkv, D}, DType::bf16, kTolBF16);
}

TEST_CASE("attention CUDA f32 matches CPU", "[gpu][attention]") {
  UM_REQUIRE_GPU();
  PoisonArena poison(Device::cuda());
  for (int64_t D : {16, 64})
    for (int64_t T : {1, 37, 130, 257})
      for (auto [H, Hkv] : {std::pair<int64_t, int64_t>{2, 2}, {4, 2}}) check_cuda_attention({2, T, H, Hkv, D}, DType::f32, kTolF32);
  // A head dim that is no multiple of 32, many heads.
  check_cuda_attention({3, 70, 6, 3, 40}, DType::f32, kTolF32);
}

TEST_CASE("attention CUDA bf16 with small head dims (f32 CUDA-core fallback) matches CPU", "[gpu][attention]") {
  UM_REQUIRE_GPU();
  PoisonArena poison(Device::cuda());
  for (int64_t D : {16, 32})
    for (int64_t T : {37, 130}) check_cuda_attention({2, T, 4, 2, D}, DType::bf16, kTolBF16);
}

TEST_CASE("attention CUDA: head dims above 128 are an error naming D", "[gpu][attention]") {
  UM_REQUIRE_GPU();
  Tensor wide = Tensor::zeros({1, 8, 3 * 160}, DType::f32, Device::cuda());
  CHECK_THROWS_WITH(ops::attention(wide, 1, 1), Catch::Contains("D=160"));
  arena_for(Device::cuda()).reset();
}
