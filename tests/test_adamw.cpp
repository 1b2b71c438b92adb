#include <cmath>

#include "testing.h"
#include "ultramem/optim/adamw.h"

using namespace um;
using namespace um::testing;
using optim::AdamWGroup;
using optim::AdamWHyper;

namespace {

// The optimizer state of one run: f32 buffers plus a bf16 compute copy, on one device.
struct State {
  Tensor param, m, v, copy;
  State(const Tensor& p0, Device d, int64_t offset = 0) {
    // offset > 0: views starting `offset` elements into larger buffers (unaligned addresses).
    int64_t n = p0.numel();
    auto make = [&](DType dt) { return Tensor::zeros({n + offset}, dt, d).narrow0(offset, n); };
    param = make(DType::f32);
    param.copy_from(p0.to(d));
    m = make(DType::f32);
    v = make(DType::f32);
    copy = make(DType::bf16);
  }
};

// torch.optim.AdamW in double: the formula of adamw.h, applied to [begin, end) of each group.
void reference_step(std::vector<double>& p, std::vector<double>& m, std::vector<double>& v,
                    const std::vector<double>& grad, const std::vector<AdamWGroup>& groups, const AdamWHyper& h) {
  double bc1 = 1 - std::pow(double(h.beta1), double(h.step)), bc2 = 1 - std::pow(double(h.beta2), double(h.step));
  for (const AdamWGroup& gr : groups) {
    for (int64_t i = gr.begin; i < gr.end; ++i) {
      double g = grad[size_t(i)] * h.grad_scale;
      p[size_t(i)] *= 1 - double(gr.lr) * gr.weight_decay;
      m[size_t(i)] = h.beta1 * m[size_t(i)] + (1 - double(h.beta1)) * g;
      v[size_t(i)] = h.beta2 * v[size_t(i)] + (1 - double(h.beta2)) * g * g;
      double mhat = m[size_t(i)] / bc1, vhat = v[size_t(i)] / bc2;
      p[size_t(i)] -= gr.lr * mhat / (std::sqrt(vhat) + h.eps);
    }
  }
}

double naive_sq_sum(const std::vector<double>& x, int64_t begin, int64_t end) {
  double s = 0;
  for (int64_t i = begin; i < end; ++i) s += x[size_t(i)] * x[size_t(i)];
  return s;
}

}  // namespace

TEST_CASE("adamw: CPU matches the AdamW formula over several steps", "[optim][adamw]") {
  const int64_t n = 103;
  std::vector<AdamWGroup> groups = {{0, 40, 1e-2f, 0.1f}, {50, 97, 3e-3f, 0.f}};
  Tensor p0 = randn({n}, DType::f32, Device::cpu(), 1);
  State s(p0, Device::cpu());
  // A sentinel in the copy shows which elements the step refreshed.
  s.copy.copy_from(Tensor::from_doubles(std::vector<double>(size_t(n), 7.0), {n}, DType::bf16));
  std::vector<double> p = p0.to_doubles(), m(size_t(n), 0.0), v(size_t(n), 0.0);
  AdamWHyper h;
  h.grad_scale = 0.5f;
  for (int64_t step = 1; step <= 4; ++step) {
    h.step = step;
    Tensor grad = randn({n}, DType::f32, Device::cpu(), 10 + uint64_t(step));
    optim::adamw_step(s.param, grad, s.m, s.v, s.copy, groups, h);
    reference_step(p, m, v, grad.to_doubles(), groups, h);
    INFO("step " << step);
    CHECK(rel_error(s.param.to_doubles(), p) < 1e-6);
    CHECK(rel_error(s.m.to_doubles(), m) < 1e-6);
    CHECK(rel_error(s.v.to_doubles(), v) < 1e-6);
  }
  std::vector<double> got = s.param.to_doubles(), start = p0.to_doubles(), copy = s.copy.to_doubles();
  std::vector<double> moment = s.m.to_doubles();
  const float* pf = s.param.data_as<float>();
  for (int64_t i = 0; i < n; ++i) {
    bool in_group = i < 40 || (i >= 50 && i < 97);
    if (in_group) {
      CHECK(s.copy.data_as<uint16_t>()[i] == float_to_bf16_bits(pf[i]));
    } else {
      CHECK(got[size_t(i)] == start[size_t(i)]);
      CHECK(copy[size_t(i)] == 7.0);
      CHECK(moment[size_t(i)] == 0.0);
    }
  }
}

TEST_CASE("adamw: malformed groups and buffers are errors", "[optim][adamw]") {
  const int64_t n = 20;
  State s(randn({n}, DType::f32, Device::cpu(), 2), Device::cpu());
  Tensor grad = randn({n}, DType::f32, Device::cpu(), 3);
  AdamWHyper h;
  CHECK_THROWS_AS(optim::adamw_step(s.param, grad, s.m, s.v, Tensor(), {{0, 10, 1e-3f, 0.f}, {9, 20, 1e-3f, 0.f}}, h),
                  Error);
  CHECK_THROWS_AS(optim::adamw_step(s.param, grad, s.m, s.v, Tensor(), {{5, 21, 1e-3f, 0.f}}, h), Error);
  CHECK_THROWS_AS(optim::adamw_step(s.param, grad.view({4, 5}), s.m, s.v, Tensor(), {{0, 20, 1e-3f, 0.f}}, h), Error);
  CHECK_THROWS_AS(optim::adamw_step(s.param, grad, s.m, s.v, s.m, {{0, 20, 1e-3f, 0.f}}, h), Error);
  h.step = 0;
  CHECK_THROWS_AS(optim::adamw_step(s.param, grad, s.m, s.v, Tensor(), {{0, 20, 1e-3f, 0.f}}, h), Error);
  h.step = 1;
  CHECK_NOTHROW(optim::adamw_step(s.param, grad, s.m, s.v, Tensor(), {{10, 20, 1e-3f, 0.f}, {0, 10, 1e-3f, 0.f}}, h));
}

TEST_CASE("grad_norm and grad_sq_norms match a naive sum", "[optim][adamw]") {
  const int64_t n = 200003;  // several reduction chunks
  Tensor g = randn({n}, DType::f32, Device::cpu(), 4);
  std::vector<double> x = g.to_doubles();
  double norm = optim::grad_norm(g);
  double ref = std::sqrt(naive_sq_sum(x, 0, n));
  CHECK(std::abs(norm - ref) <= 1e-12 * ref);
  std::vector<std::pair<int64_t, int64_t>> ranges = {{0, 10}, {5, 100000}, {7, 7}, {150000, n}};
  std::vector<double> sq = optim::grad_sq_norms(g, ranges);
  REQUIRE(sq.size() == ranges.size());
  for (size_t k = 0; k < ranges.size(); ++k) {
    double r = naive_sq_sum(x, ranges[k].first, ranges[k].second);
    CHECK(std::abs(sq[k] - r) <= 1e-12 * r);
  }
  CHECK(sq[2] == 0.0);
  CHECK_THROWS_AS(optim::grad_sq_norms(g, {{10, 5}}), Error);
  CHECK_THROWS_AS(optim::grad_sq_norms(g, {{0, n + 1}}), Error);

  // A non-finite element makes the norm non-finite and is found by the range that holds it.
  g.data_as<float>()[123456] = INFINITY;
  CHECK(std::isinf(optim::grad_norm(g)));
  std::vector<double> located = optim::grad_sq_norms(g, {{0, 100000}, {100000, n}});
  CHECK(std::isfinite(located[0]));
  CHECK(!std::isfinite(located[1]));
  g.data_as<float>()[123456] = NAN;
  CHECK(std::isnan(optim::grad_norm(g)));
}

TEST_CASE("copy_to_bf16 rounds to nearest even", "[optim][adamw]") {
  Tensor src = randn({37}, DType::f32, Device::cpu(), 5);
  Tensor dst = Tensor::empty({37}, DType::bf16);
  optim::copy_to_bf16(src, dst);
  for (int64_t i = 0; i < 37; ++i)
    CHECK(dst.data_as<uint16_t>()[i] == float_to_bf16_bits(src.data_as<float>()[i]));
  CHECK_THROWS_AS(optim::copy_to_bf16(src, Tensor::empty({37}, DType::f32)), Error);
}

TEST_CASE("adamw and gradient norms: CUDA matches CPU", "[gpu][adamw]") {
  UM_REQUIRE_GPU();
  PoisonArena poison(Device::cuda());
  const int64_t n = 100003;
  std::vector<AdamWGroup> few = {{1, 40001, 1e-3f, 0.1f}, {40003, 99999, 3e-4f, 0.f}, {99999, 100002, 2e-3f, 0.05f}};
  // More groups than one launch's table holds, with unaligned ends.
  std::vector<AdamWGroup> many;
  for (int64_t i = 0; i < 130; ++i)
    many.push_back({i * 700 + i % 3, i * 700 + 650 + i % 5, 1e-3f * float(1 + i % 4), 0.01f * float(i % 2)});
  struct Case {
    const std::vector<AdamWGroup>* groups;
    int64_t offset;  // 1: buffers at unaligned addresses (scalar path)
  };
  for (Case cs : {Case{&few, 0}, Case{&few, 1}, Case{&many, 0}}) {
    INFO("groups " << cs.groups->size() << " offset " << cs.offset);
    Tensor p0 = randn({n}, DType::f32, Device::cpu(), 6);
    State cpu(p0, Device::cpu(), cs.offset), gpu(p0, Device::cuda(), cs.offset);
    optim::copy_to_bf16(cpu.param, cpu.copy);
    optim::copy_to_bf16(gpu.param, gpu.copy);
    AdamWHyper h;
    h.grad_scale = 0.7f;
    for (int64_t step = 1; step <= 3; ++step) {
      h.step = step;
      Tensor grad = randn({n}, DType::f32, Device::cpu(), 20 + uint64_t(step));
      optim::adamw_step(cpu.param, grad, cpu.m, cpu.v, cpu.copy, *cs.groups, h);
      optim::adamw_step(gpu.param, grad.to(Device::cuda()), gpu.m, gpu.v, gpu.copy, *cs.groups, h);
    }
    CHECK(rel_error(gpu.param, cpu.param) < 1e-6);
    CHECK(rel_error(gpu.m, cpu.m) < 1e-6);
    CHECK(rel_error(gpu.v, cpu.v) < 1e-6);
    CHECK(rel_error(gpu.copy, cpu.copy) < 1e-6);
    CHECK(rel_error(gpu.param, p0) > 1e-6);  // the step did something
  }

  // Norms: CUDA vs CPU, bitwise reproducible, non-finite detection.
  const int64_t big = 1234567;
  Tensor g = randn({big}, DType::f32, Device::cpu(), 7);
  Tensor gg = g.to(Device::cuda());
  double cpu_norm = optim::grad_norm(g), gpu_norm = optim::grad_norm(gg);
  CHECK(std::abs(gpu_norm - cpu_norm) <= 1e-12 * cpu_norm);
  CHECK(optim::grad_norm(gg) == gpu_norm);
  std::vector<std::pair<int64_t, int64_t>> ranges = {{0, big}, {3, 3}, {5, 100001}};
  for (int64_t i = 0; i < 80; ++i) ranges.push_back({i * 15000 + i % 4, i * 15000 + 9000 + i % 3});
  std::vector<double> cpu_sq = optim::grad_sq_norms(g, ranges), gpu_sq = optim::grad_sq_norms(gg, ranges);
  REQUIRE(gpu_sq.size() == ranges.size());
  for (size_t k = 0; k < ranges.size(); ++k) CHECK(std::abs(gpu_sq[k] - cpu_sq[k]) <= 1e-12 * cpu_sq[k]);
  CHECK(gpu_sq[1] == 0.0);
  CHECK(optim::grad_sq_norms(gg, ranges) == gpu_sq);
  Tensor gu = g.narrow0(1, big - 1).to(Device::cuda());  // unaligned start on the device
  Tensor gu_view = Tensor::zeros({big}, DType::f32, Device::cuda()).narrow0(1, big - 1);
  gu_view.copy_from(gu);
  CHECK(std::abs(optim::grad_norm(gu_view) - optim::grad_norm(g.narrow0(1, big - 1))) <= 1e-12 * cpu_norm);
  g.data_as<float>()[777777] = INFINITY;
  CHECK(!std::isfinite(optim::grad_norm(g.to(Device::cuda()))));
}
