#include "ultramem/nn/parameters.h"

#include <cmath>

#include "ultramem/optim/adamw.h"

namespace um::nn {

const char* param_kind_name(ParamKind k) {
  switch (k) {
    case ParamKind::matrix: return "matrix";
    case ParamKind::embedding: return "embedding";
    case ParamKind::norm: return "norm";
    case ParamKind::bias: return "bias";
    case ParamKind::memory_value: return "memory_value";
    case ParamKind::buffer: return "buffer";
  }
  return "?";
}

Parameter& ParameterStore::add(const std::string& name, const Shape& shape, ParamInit init, ParamKind kind) {
  UM_CHECK(!finalized_, "parameters declared before finalize()", name);
  UM_CHECK(find(name) == nullptr, "unique parameter names", "a second \"", name, "\"");
  Parameter p;
  p.name = name;
  p.shape = shape;
  p.init = init;
  p.kind = kind;
  p.offset = flat_numel_;
  flat_numel_ += (shape.numel() + 63) / 64 * 64;
  params_.push_back(std::move(p));
  return params_.back();
}

const Parameter* ParameterStore::find(const std::string& name) const {
  for (const auto& p : params_)
    if (p.name == name) return &p;
  return nullptr;
}

int64_t ParameterStore::numel() const {
  int64_t n = 0;
  for (const auto& p : params_) n += p.numel();
  return n;
}

static uint64_t name_hash(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

// A uniform draw in [0, 1) from (key, counter): splitmix64's finaliser, 53 bits.
static double unit_draw(uint64_t key, uint64_t counter) {
  uint64_t z = key + (counter + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return double(z >> 11) * 0x1.0p-53;
}

void ParameterStore::finalize(Device device, DType compute_dtype, uint64_t seed) {
  UM_CHECK(!finalized_, "finalize() once", "a second call");
  UM_CHECK(compute_dtype == DType::f32 || (compute_dtype == DType::bf16 && device.is_cuda()),
           "f32 compute, or bf16 compute on a GPU", dtype_name(compute_dtype), " on ", device.str());
  device_ = device;
  compute_dtype_ = compute_dtype;
  // Initial values are drawn on the host so CPU and GPU runs start from identical weights.
  Tensor host = Tensor::zeros({flat_numel_}, DType::f32, Device::cpu());
  float* h = host.data_as<float>();
  for (auto& p : params_) {
    float* dst = h + p.offset;
    switch (p.init.kind) {
      case ParamInit::Kind::zeros: break;
      case ParamInit::Kind::ones: std::fill(dst, dst + p.numel(), 1.f); break;
      case ParamInit::Kind::constant: std::fill(dst, dst + p.numel(), p.init.lo); break;
      case ParamInit::Kind::uniform: {
        const uint64_t key = seed * 0x9E3779B97F4A7C15ull ^ name_hash(p.name);
        const double lo = p.init.lo, span = double(p.init.hi) - double(p.init.lo);
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < p.numel(); ++i) dst[i] = float(lo + span * unit_draw(key, uint64_t(i)));
        break;
      }
      case ParamInit::Kind::normal: {
        // Box-Muller on counter-based uniform draws: bit-identical across standard libraries and
        // thread counts, and parallel (memory value tables hold billions of weights).
        const uint64_t key = seed * 0x9E3779B97F4A7C15ull ^ name_hash(p.name);
        const double two_pi = 6.283185307179586;
        const int64_t n = p.numel();
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i += 2) {
          const double u1 = 1.0 - unit_draw(key, uint64_t(i)), u2 = unit_draw(key, uint64_t(i) + 1);
          const double r = std::sqrt(-2.0 * std::log(u1));
          dst[i] = float(p.init.std * r * std::cos(two_pi * u2));
          if (i + 1 < n) dst[i + 1] = float(p.init.std * r * std::sin(two_pi * u2));
        }
        break;
      }
    }
  }
  flat_master_ = host.to(device);
  flat_grad_ = Tensor::zeros({flat_numel_}, DType::f32, device);
  if (compute_dtype == DType::bf16) flat_compute_ = Tensor::empty({flat_numel_}, DType::bf16, device);
  for (auto& p : params_) {
    p.master = flat_master_.narrow0(p.offset, p.numel()).view(p.shape);
    p.grad = flat_grad_.narrow0(p.offset, p.numel()).view(p.shape);
    p.compute = flat_compute_.defined() ? flat_compute_.narrow0(p.offset, p.numel()).view(p.shape) : p.master;
    p.master.set_name(p.name);
    p.compute.set_name(p.name);
    p.compute.set_requires_grad(true);
    p.compute.set_grad(p.grad);
  }
  finalized_ = true;
  refresh_compute_copy();
}

void ParameterStore::refresh_compute_copy() {
  if (flat_compute_.defined()) optim::copy_to_bf16(flat_master_, flat_compute_);
}

void ParameterStore::begin_step() {
  for (auto& p : params_) p.compute.impl()->grad_ready = false;
}

void ParameterStore::zero_unwritten_grads() {
  for (auto& p : params_)
    if (!p.compute.impl()->grad_ready) {
      p.grad.zero_();
      p.compute.impl()->grad_ready = true;
    }
}

}  // namespace um::nn
