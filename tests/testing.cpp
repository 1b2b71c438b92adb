#include "testing.h"

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>

#include "ultramem/ops/elementwise.h"

namespace um::testing {

std::string fresh_dir(const std::string& tag) {
  namespace fs = std::filesystem;
  fs::path p = fs::temp_directory_path() / ("ultramem-" + tag + "-" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

nlohmann::json read_config(const std::string& name) {
  const std::string path = std::string(ULTRAMEM_SOURCE_DIR) + "/configs/" + name;
  std::ifstream in(path);
  if (!in) throw Error(path, "a readable config", "it cannot be opened");
  return nlohmann::json::parse(in, nullptr, true, true);
}

Tensor convert(const Tensor& t, DType dt, Device dev) { return Tensor::from_doubles(t.to_doubles(), t.shape(), dt, dev); }

Tensor rounded(const Tensor& t, DType dt) { return convert(convert(t, dt, Device::cpu()), DType::f32, Device::cpu()); }

Tensor nan_filled(const Shape& s, DType dt, Device dev) {
  return Tensor::from_doubles(std::vector<double>(size_t(s.numel()), std::numeric_limits<double>::quiet_NaN()), s, dt,
                              dev);
}

Tensor randn(const Shape& shape, DType dtype, Device device, uint64_t seed, double scale) {
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + 1);
  std::normal_distribution<double> nd(0.0, scale);
  std::vector<double> v(size_t(shape.numel()));
  for (auto& x : v) x = nd(rng);
  return Tensor::from_doubles(v, shape, dtype, device);
}

Tensor uniform(const Shape& shape, DType dtype, Device device, uint64_t seed, double lo, double hi) {
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + 7);
  std::uniform_real_distribution<double> ud(lo, hi);
  std::vector<double> v(size_t(shape.numel()));
  for (auto& x : v) x = ud(rng);
  return Tensor::from_doubles(v, shape, dtype, device);
}

Tensor randint(const Shape& shape, int64_t n, DType dtype, Device device, uint64_t seed) {
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + 3);
  std::uniform_int_distribution<int64_t> ud(0, n - 1);
  std::vector<int64_t> v(size_t(shape.numel()));
  for (auto& x : v) x = ud(rng);
  return Tensor::from_ints(v, shape, dtype, device);
}

double rel_error(const std::vector<double>& out, const std::vector<double>& ref) {
  if (out.size() != ref.size()) return INFINITY;
  double num = 0, den = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    if (!std::isfinite(out[i]) || !std::isfinite(ref[i])) return INFINITY;
    num += (out[i] - ref[i]) * (out[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  if (den == 0) return num == 0 ? 0 : INFINITY;
  return std::sqrt(num / den);
}

double rel_error(const Tensor& out, const Tensor& ref) {
  if (out.shape() != ref.shape()) return INFINITY;
  return rel_error(out.to_doubles(), ref.to_doubles());
}

// sum(out * R) as a scalar f64 tensor; when a tape is active its backward writes R * dloss into out.
static Tensor project(const Tensor& out, const Tensor& R) {
  std::vector<double> o = out.to_doubles(), r = R.to_doubles();
  double s = 0;
  for (size_t i = 0; i < o.size(); ++i) s += o[i] * r[i];
  Tensor loss = Tensor::from_doubles({s}, Shape{1}, DType::f32);
  if (needs_grad({&out})) {
    loss.set_requires_grad(true);
    current_tape()->record([out, R, loss] {
      double g = grad_of(loss).to_doubles()[0];
      std::vector<double> r = R.to_doubles();
      for (auto& x : r) x *= g;
      Tensor gr = Tensor::from_doubles(r, out.shape(), out.dtype(), out.device());
      ops::accumulate_grad(grad_slot(out), gr);
    });
  }
  return loss;
}

std::vector<Tensor> grads_of_projection(const std::function<Tensor(const std::vector<Tensor>&)>& forward,
                                        const std::vector<Tensor>& inputs, const Tensor& R) {
  for (auto& t : inputs) {
    t.impl()->grad.reset();
    t.impl()->grad_ready = false;
  }
  Tape tape;
  {
    TapeScope scope(tape);
    Tensor out = forward(inputs);
    Tensor loss = project(out, R);
    tape.backward(loss);
  }
  std::vector<Tensor> grads;
  for (auto& t : inputs) {
    Tensor g = grad_of(t);
    // Copy out of the arena so the caller may keep it.
    grads.push_back(g ? g.to(Device::cpu()) : Tensor());
  }
  return grads;
}

double gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& forward,
                 const std::vector<Tensor>& inputs, double eps, double tol) {
  Tensor out0 = forward(inputs);
  Tensor R = randn(out0.shape(), DType::f64, Device::cpu(), 12345);
  std::vector<Tensor> analytic = grads_of_projection(forward, inputs, R);
  auto value = [&] {
    Tensor out = forward(inputs);
    std::vector<double> o = out.to_doubles(), r = R.to_doubles();
    double s = 0;
    for (size_t i = 0; i < o.size(); ++i) s += o[i] * r[i];
    return s;
  };
  double worst = 0;
  for (size_t k = 0; k < inputs.size(); ++k) {
    const Tensor& x = inputs[k];
    if (!x.requires_grad()) continue;
    REQUIRE(x.dtype() == DType::f64);
    REQUIRE(analytic[k].defined());
    std::vector<double> numeric(size_t(x.numel()));
    double* p = x.data_as<double>();
    for (int64_t i = 0; i < x.numel(); ++i) {
      double keep = p[i];
      p[i] = keep + eps;
      double fp = value();
      p[i] = keep - eps;
      double fm = value();
      p[i] = keep;
      numeric[size_t(i)] = (fp - fm) / (2 * eps);
    }
    double err = rel_error(analytic[k].to_doubles(), numeric);
    INFO("input " << k << " (" << x.desc() << ") relative gradient error " << err);
    CHECK(err < tol);
    worst = std::max(worst, err);
  }
  arena_for(Device::cpu()).reset();
  return worst;
}

}  // namespace um::testing
