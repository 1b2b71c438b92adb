// Parameters live in flat buffers allocated once: f32 master weights, f32 gradients and, under
// mixed precision, a bf16 compute copy. Each Parameter is a set of views into them. Ops see
// `compute`, whose gradient slot points at the f32 gradient view, so backward kernels write master
// gradients directly. Flat buffers make the optimizer one kernel and the all-reduce one call.
#pragma once
#include <deque>
#include <string>
#include <vector>

#include "ultramem/core/tensor.h"

namespace um::nn {

// What a parameter is, for weight-decay masks and learning-rate groups.
// memory_value: memory-layer value tables (values, pre-values), their own learning-rate group
// (mem_value_lr_times) and weight decay as matrices. buffer: state a layer keeps in the store so it
// is checkpointed with the weights (UltraMem's Tucker u, v), never changed by the optimizer.
enum class ParamKind { matrix, embedding, norm, bias, memory_value, buffer };
const char* param_kind_name(ParamKind k);

struct ParamInit {
  enum class Kind { normal, uniform, constant, zeros, ones } kind = Kind::normal;
  float std = 0.02f;        // normal
  float lo = 0.f, hi = 0.f;  // uniform [lo, hi); constant: lo
  static ParamInit normal(float std) { return {Kind::normal, std}; }
  static ParamInit uniform(float lo, float hi) { return {Kind::uniform, 0.f, lo, hi}; }
  static ParamInit constant(float c) { return {Kind::constant, 0.f, c, c}; }
  static ParamInit zeros() { return {Kind::zeros, 0.f}; }
  static ParamInit ones() { return {Kind::ones, 0.f}; }
};

struct Parameter {
  std::string name;
  Shape shape;
  ParamInit init;
  ParamKind kind = ParamKind::matrix;
  int64_t offset = 0;  // element offset in the flat buffers (64-element aligned)
  Tensor master;       // f32
  Tensor grad;         // f32
  Tensor compute;      // bf16 copy under mixed precision, else the master itself
  int64_t numel() const { return shape.numel(); }
};

class ParameterStore {
 public:
  // Declares a parameter; views are valid after finalize().
  Parameter& add(const std::string& name, const Shape& shape, ParamInit init, ParamKind kind);
  // Allocates the flat buffers on `device`, fills the master weights from `seed` (the same values on
  // every device: drawn on the host per parameter from (seed, name)), and makes the compute copy.
  void finalize(Device device, DType compute_dtype, uint64_t seed);
  // Refreshes the compute copy from the master weights (after loading a checkpoint).
  void refresh_compute_copy();

  // Called before a step's first backward: gradients are overwritten by their first writer.
  void begin_step();
  // Zeroes the gradient of every parameter no backward wrote this step (unused parameters).
  void zero_unwritten_grads();

  std::deque<Parameter>& params() { return params_; }
  const std::deque<Parameter>& params() const { return params_; }
  const Parameter* find(const std::string& name) const;
  int64_t numel() const;        // sum of parameter sizes
  int64_t flat_numel() const { return flat_numel_; }  // with alignment padding
  const Tensor& flat_master() const { return flat_master_; }
  const Tensor& flat_grad() const { return flat_grad_; }
  const Tensor& flat_compute() const { return flat_compute_; }  // undefined without mixed precision
  Device device() const { return device_; }
  DType compute_dtype() const { return compute_dtype_; }

 private:
  std::deque<Parameter> params_;  // deque: references stay valid as parameters are added
  int64_t flat_numel_ = 0;
  Tensor flat_master_, flat_grad_, flat_compute_;
  Device device_;
  DType compute_dtype_ = DType::f32;
  bool finalized_ = false;
};

}  // namespace um::nn
