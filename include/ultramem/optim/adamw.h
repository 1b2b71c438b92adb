// AdamW over flat buffers: every parameter, gradient and moment of the model lives in one f32
// buffer each (nn/parameters.h), so one optimizer step is one fused pass over element ranges, and
// the gradient norm for clipping is one deterministic reduction.
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

#include "ultramem/core/tensor.h"

namespace um::optim {

// An element range [begin, end) of the flat buffers with its learning rate and weight decay.
struct AdamWGroup {
  int64_t begin, end;
  float lr;
  float weight_decay;
};

struct AdamWHyper {
  float beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f;
  int64_t step = 1;        // 1-based, for bias correction
  float grad_scale = 1.f;  // multiplies the gradient first (clipping, 1/accumulation)
};

// One AdamW step, exactly torch.optim.AdamW's formula (decoupled weight decay):
//   g = grad * grad_scale;  param *= 1 - lr * wd
//   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
//   param -= lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)
// param/grad/m/v: f32 [P] on one device. param_copy: optional bf16 [P] compute copy refreshed from
// the updated param in the same pass (undefined tensor = none). Groups must not overlap; elements
// outside every group are untouched (param_copy included).
void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, const Tensor& param_copy,
                const std::vector<AdamWGroup>& groups, const AdamWHyper& h);

// Deterministic global L2 norm of a flat f32 gradient (squares summed in double in a fixed order,
// two-stage on the GPU); NaN or inf when any element is non-finite.
double grad_norm(const Tensor& grad);

// Sum of squares of grad over each [begin, end) range (per-layer norms, locating the first
// non-finite gradient): one double per range, deterministic. Ranges may overlap.
std::vector<double> grad_sq_norms(const Tensor& grad, const std::vector<std::pair<int64_t, int64_t>>& ranges);

// Refreshes a bf16 copy from f32 params (at start and after loading a checkpoint).
void copy_to_bf16(const Tensor& src_f32, const Tensor& dst_bf16);

// What both backends apply, derived once on the host (in double, then rounded to float) so the CPU
// and the GPU run the same float operations.
struct AdamWGroupCoefficients {
  int64_t begin, end;
  float step_size;  // lr / (1 - beta1^step)
  float decay;      // 1 - lr * weight_decay
};
struct AdamWStepCoefficients {
  float beta1, one_minus_beta1, beta2, one_minus_beta2, eps;
  float bias_correction2_sqrt;  // sqrt(1 - beta2^step)
  float grad_scale;
};

}  // namespace um::optim

// Backends: the argument checks happen in um::optim.
namespace um::cpu {
void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, const Tensor& param_copy,
                const std::vector<optim::AdamWGroupCoefficients>& groups, const optim::AdamWStepCoefficients& c);
std::vector<double> grad_sq_norms(const Tensor& grad, const std::vector<std::pair<int64_t, int64_t>>& ranges);
}  // namespace um::cpu

namespace um::cuda {
void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, const Tensor& param_copy,
                const std::vector<optim::AdamWGroupCoefficients>& groups, const optim::AdamWStepCoefficients& c);
std::vector<double> grad_sq_norms(const Tensor& grad, const std::vector<std::pair<int64_t, int64_t>>& ranges);
}  // namespace um::cuda
