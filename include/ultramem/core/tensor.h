// Tensor: a contiguous n-d array (up to 5 dims) on the CPU or a GPU, plus the slots autograd needs.
// Storage is either owned (parameters, optimizer state, test data) or borrowed from an Arena
// (activations, valid until the arena is reset at the end of a step).
#pragma once
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "ultramem/core/check.h"
#include "ultramem/core/device.h"
#include "ultramem/core/dtype.h"

namespace um {

struct Shape {
  static constexpr int kMaxDims = 5;
  int ndim = 0;
  int64_t dims[kMaxDims] = {0, 0, 0, 0, 0};

  Shape() = default;
  Shape(std::initializer_list<int64_t> d);
  explicit Shape(const std::vector<int64_t>& d);
  int64_t numel() const;
  // Negative indices count from the end, as in Python.
  int64_t operator[](int i) const { return dims[i < 0 ? ndim + i : i]; }
  int64_t& operator[](int i) { return dims[i < 0 ? ndim + i : i]; }
  bool operator==(const Shape& o) const;
  bool operator!=(const Shape& o) const { return !(*this == o); }
  std::vector<int64_t> vec() const { return std::vector<int64_t>(dims, dims + ndim); }
  std::string str() const;
};

struct Storage {
  void* ptr = nullptr;
  size_t bytes = 0;
  Device device;
  bool owned = false;
  Storage() = default;
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage();
};

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  size_t offset = 0;  // bytes into storage
  Shape shape;
  DType dtype = DType::f32;
  std::string name;  // parameters carry their name for error messages and checkpoints
  // Autograd. `grad` has this tensor's shape; its dtype is the tensor's on the CPU and f32 for
  // parameters on a GPU (bf16 compute copies accumulate into f32 master gradients).
  bool requires_grad = false;
  std::shared_ptr<TensorImpl> grad;
  bool grad_ready = false;  // grad holds this step's value; the first writer overwrites, later ones add
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // Owned allocation (not from the arena). Contents are uninitialised.
  static Tensor empty(const Shape& shape, DType dtype, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype, Device device = Device::cpu());
  // Borrowed memory: the caller keeps it alive.
  static Tensor wrap(void* ptr, const Shape& shape, DType dtype, Device device);
  // Host data converted to `dtype` (f32, f64, bf16, i32, i64, u16, u32), then copied to `device`.
  static Tensor from_doubles(const std::vector<double>& v, const Shape& shape, DType dtype,
                             Device device = Device::cpu());
  static Tensor from_ints(const std::vector<int64_t>& v, const Shape& shape, DType dtype,
                          Device device = Device::cpu());

  bool defined() const { return impl_ != nullptr; }
  explicit operator bool() const { return defined(); }
  const Shape& shape() const { return impl_->shape; }
  int64_t dim(int i) const { return impl_->shape[i]; }
  int ndim() const { return impl_->shape.ndim; }
  int64_t numel() const { return impl_->shape.numel(); }
  DType dtype() const { return impl_->dtype; }
  Device device() const { return impl_->storage->device; }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype()); }
  void* data() const { return static_cast<char*>(impl_->storage->ptr) + impl_->offset; }
  template <typename T>
  T* data_as() const { return static_cast<T*>(data()); }
  const std::string& name() const { return impl_->name; }
  void set_name(std::string n) const { impl_->name = std::move(n); }
  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  bool same(const Tensor& o) const { return impl_ == o.impl_; }

  // Same memory, another shape with the same element count. The view shares no autograd slots.
  Tensor view(const Shape& shape) const;
  // Rows [start, start+len) of dimension 0; same memory.
  Tensor narrow0(int64_t start, int64_t len) const;

  // Deep copies.
  Tensor to(Device device) const;
  void copy_from(const Tensor& src) const;  // same shape and dtype, any devices
  void zero_() const;
  std::vector<double> to_doubles() const;   // any numeric dtype, any device
  std::vector<int64_t> to_ints() const;

  // Autograd slots.
  bool requires_grad() const { return impl_->requires_grad; }
  void set_requires_grad(bool r) const { impl_->requires_grad = r; }
  Tensor grad() const { return impl_->grad ? Tensor(impl_->grad) : Tensor(); }
  void set_grad(const Tensor& g) const { impl_->grad = g.impl_; }

  std::string desc() const;  // "name [2,3] f32 cpu" for messages

 private:
  std::shared_ptr<TensorImpl> impl_;
};

// The values of one-element tensors (any numeric dtype but f16, all on one device) with one
// synchronisation: on the GPU they are gathered on the device and copied to the host in one piece, where
// reading them one by one would stall the stream once per tensor (the trainer's loss and auxiliary losses).
std::vector<double> scalar_values(const std::vector<Tensor>& scalars);

// Raw byte movement between any two devices (host<->device, device<->device, host<->host).
void copy_bytes(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes);

// Argument checks used by every op: name the tensor and say what shape/dtype/device was expected.
void check_shape(const Tensor& t, const Shape& expected, const char* what);
void check_same_device(const Tensor& a, const Tensor& b, const char* what);
void check_dtype(const Tensor& t, DType expected, const char* what);
// All three for one tensor: t has this shape and dtype and lives on like's device.
void check_tensor(const Tensor& t, const Shape& shape, DType dtype, const Tensor& like, const char* what);

}  // namespace um
