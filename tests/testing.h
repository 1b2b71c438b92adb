// Test helpers: random tensors, relative error, float64 finite-difference gradient checks, and the
// [gpu] guard.
#pragma once
#include <catch2/catch.hpp>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "ultramem/core/arena.h"
#include "ultramem/core/tape.h"
#include "ultramem/core/tensor.h"

namespace um::testing {

// N(0, scale^2) values, never all zero.
Tensor randn(const Shape& shape, DType dtype, Device device, uint64_t seed, double scale = 1.0);
// U[lo, hi) values.
Tensor uniform(const Shape& shape, DType dtype, Device device, uint64_t seed, double lo, double hi);
// Integers in [0, n).
Tensor randint(const Shape& shape, int64_t n, DType dtype, Device device, uint64_t seed);

// `t`'s values as dtype `dt` on `dev` (rounded to dt).
Tensor convert(const Tensor& t, DType dt, Device dev);
// `t` rounded to dtype `dt`, held as f32 on the CPU: the reference input matching what the GPU sees.
Tensor rounded(const Tensor& t, DType dt);
// All NaN: an output buffer a kernel must overwrite entirely.
Tensor nan_filled(const Shape& s, DType dt, Device dev);

// ||out - ref|| / ||ref|| over all elements; +inf when either holds a NaN or an infinity.
double rel_error(const Tensor& out, const Tensor& ref);
double rel_error(const std::vector<double>& out, const std::vector<double>& ref);

// Float64 finite-difference check of every gradient the tape computes. `forward` maps the inputs
// (f64 CPU tensors; those that require grad are checked) to one output tensor; the scalar under test
// is sum(output * R) for a fixed random R so every output element contributes.
// CHECKs each input's relative error ||analytic - numeric|| / ||numeric|| < tol and returns the worst.
double gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& forward,
                 const std::vector<Tensor>& inputs, double eps = 1e-6, double tol = 1e-6);

// The tape-driven gradients of sum(output * R) for the given R (used to compare CPU and GPU
// backward passes on the same seed).
std::vector<Tensor> grads_of_projection(const std::function<Tensor(const std::vector<Tensor>&)>& forward,
                                        const std::vector<Tensor>& inputs, const Tensor& R);

// An empty directory under the system's temporary directory, unique to this process:
// <tmp>/ultramem-<tag>-<pid> (removed first if an earlier run left it).
std::string fresh_dir(const std::string& tag);
// configs/<name> of the source tree, parsed.
nlohmann::json read_config(const std::string& name);

// Turns arena poisoning on for the device's arena during a test.
struct PoisonArena {
  explicit PoisonArena(Device d) : arena(arena_for(d)) { arena.set_poison(true); }
  ~PoisonArena() { arena.set_poison(false); }
  Arena& arena;
};

}  // namespace um::testing

// Tolerances of DESIGN.md section 3.
constexpr double kTolF32 = 1e-5;
constexpr double kTolTF32 = 1e-3;
constexpr double kTolBF16 = 1e-2;
constexpr double kTolGradcheck = 1e-6;

// Tests tagged [gpu] start with this: without a device they skip visibly (ctest reports the [gpu]
// suite as skipped; see tests/main.cpp).
#define UM_REQUIRE_GPU()                                 \
  do {                                                   \
    if (!::um::cuda_available()) {                       \
      WARN("skipped: no CUDA device in this process");   \
      return;                                            \
    }                                                    \
  } while (0)
