#include "ultramem/core/tensor.h"

#include <cstdlib>
#include <cstring>
#include <sstream>

#include "src/core/device_memory.h"
#include "ultramem/core/arena.h"

namespace um {

Shape::Shape(std::initializer_list<int64_t> d) {
  UM_CHECK(d.size() <= size_t(kMaxDims), "at most 5 dimensions", d.size());
  for (int64_t v : d) dims[ndim++] = v;
}

Shape::Shape(const std::vector<int64_t>& d) {
  UM_CHECK(d.size() <= size_t(kMaxDims), "at most 5 dimensions", d.size());
  for (int64_t v : d) dims[ndim++] = v;
}

int64_t Shape::numel() const {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= dims[i];
  return n;
}

bool Shape::operator==(const Shape& o) const {
  if (ndim != o.ndim) return false;
  for (int i = 0; i < ndim; ++i)
    if (dims[i] != o.dims[i]) return false;
  return true;
}

std::string Shape::str() const {
  std::string s = "[";
  for (int i = 0; i < ndim; ++i) s += (i ? "," : "") + std::to_string(dims[i]);
  return s + "]";
}

Storage::~Storage() {
  if (!owned || !ptr) return;
  if (device.is_cpu())
    std::free(ptr);
  else
    detail::device_free(ptr);
}

static std::shared_ptr<Storage> allocate_storage(size_t bytes, Device device) {
  auto s = std::make_shared<Storage>();
  s->bytes = bytes;
  s->device = device;
  s->owned = true;
  if (device.is_cpu()) {
    size_t rounded = (bytes + 63) / 64 * 64;
    s->ptr = std::aligned_alloc(64, rounded ? rounded : 64);
    UM_CHECK(s->ptr != nullptr, detail::concat(bytes, " bytes of host memory"), "allocation failure");
  } else {
    s->ptr = detail::device_malloc(bytes);
  }
  return s;
}

static Tensor make_tensor(std::shared_ptr<Storage> storage, size_t offset, const Shape& shape, DType dtype) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::move(storage);
  impl->offset = offset;
  impl->shape = shape;
  impl->dtype = dtype;
  return Tensor(impl);
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  UM_CHECK(shape.numel() >= 0, "a non-negative element count", shape.str());
  return make_tensor(allocate_storage(size_t(shape.numel()) * dtype_size(dtype), device), 0, shape, dtype);
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.zero_();
  return t;
}

Tensor Tensor::wrap(void* ptr, const Shape& shape, DType dtype, Device device) {
  auto s = std::make_shared<Storage>();
  s->ptr = ptr;
  s->bytes = size_t(shape.numel()) * dtype_size(dtype);
  s->device = device;
  s->owned = false;
  return make_tensor(std::move(s), 0, shape, dtype);
}

template <typename T>
static void convert_from_doubles(const std::vector<double>& v, void* dst) {
  T* d = static_cast<T*>(dst);
  for (size_t i = 0; i < v.size(); ++i) d[i] = static_cast<T>(v[i]);
}

static void store_doubles(const std::vector<double>& v, DType dtype, void* dst) {
  switch (dtype) {
    case DType::f32: convert_from_doubles<float>(v, dst); break;
    case DType::f64: convert_from_doubles<double>(v, dst); break;
    case DType::i32: convert_from_doubles<int32_t>(v, dst); break;
    case DType::i64: convert_from_doubles<int64_t>(v, dst); break;
    case DType::u16: convert_from_doubles<uint16_t>(v, dst); break;
    case DType::u32: convert_from_doubles<uint32_t>(v, dst); break;
    case DType::bf16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < v.size(); ++i) d[i] = float_to_bf16_bits(float(v[i]));
      break;
    }
    case DType::f16: throw Error("Tensor::from_doubles", "a dtype other than f16 (no host f16 conversion)", "f16");
  }
}

Tensor Tensor::from_doubles(const std::vector<double>& v, const Shape& shape, DType dtype, Device device) {
  UM_CHECK(int64_t(v.size()) == shape.numel(), detail::concat(shape.numel(), " values for shape ", shape.str()),
           v.size());
  Tensor host = empty(shape, dtype, Device::cpu());
  store_doubles(v, dtype, host.data());
  return device.is_cpu() ? host : host.to(device);
}

Tensor Tensor::from_ints(const std::vector<int64_t>& v, const Shape& shape, DType dtype, Device device) {
  std::vector<double> d(v.begin(), v.end());
  return from_doubles(d, shape, dtype, device);
}

Tensor Tensor::view(const Shape& shape) const {
  UM_CHECK(shape.numel() == numel(), detail::concat("a view with ", numel(), " elements of ", desc()),
           shape.str());
  Tensor t = make_tensor(impl_->storage, impl_->offset, shape, dtype());
  t.impl_->name = impl_->name;
  return t;
}

Tensor Tensor::narrow0(int64_t start, int64_t len) const {
  UM_CHECK(ndim() >= 1 && start >= 0 && len >= 0 && start + len <= dim(0),
           detail::concat("rows within [0,", ndim() ? dim(0) : 0, ") of ", desc()), "[", start, ",", start + len, ")");
  Shape s = shape();
  s[0] = len;
  size_t row_bytes = size_t(numel() / std::max<int64_t>(dim(0), 1)) * dtype_size(dtype());
  return make_tensor(impl_->storage, impl_->offset + size_t(start) * row_bytes, s, dtype());
}

void copy_bytes(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes) {
  if (bytes == 0) return;
  if (dst_dev.is_cpu() && src_dev.is_cpu())
    std::memcpy(dst, src, bytes);
  else
    detail::device_memcpy(dst, dst_dev.is_cuda(), src, src_dev.is_cuda(), bytes);
}

Tensor Tensor::to(Device device) const {
  Tensor t = empty(shape(), dtype(), device);
  t.copy_from(*this);
  t.impl_->name = impl_->name;
  return t;
}

void Tensor::copy_from(const Tensor& src) const {
  UM_CHECK(src.shape() == shape() && src.dtype() == dtype(), "a copy source of " + desc(), src.desc());
  copy_bytes(data(), device(), src.data(), src.device(), nbytes());
}

void Tensor::zero_() const {
  if (device().is_cpu())
    std::memset(data(), 0, nbytes());
  else
    detail::device_memset(data(), 0, nbytes());
}

template <typename T, typename R>
static void convert_to(const void* src, size_t n, std::vector<R>& out) {
  const T* s = static_cast<const T*>(src);
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<R>(s[i]);
}

template <typename R>
static std::vector<R> host_values(const Tensor& t) {
  Tensor h = t.device().is_cpu() ? t : t.to(Device::cpu());
  std::vector<R> out(size_t(h.numel()));
  size_t n = out.size();
  switch (h.dtype()) {
    case DType::f32: convert_to<float>(h.data(), n, out); break;
    case DType::f64: convert_to<double>(h.data(), n, out); break;
    case DType::i32: convert_to<int32_t>(h.data(), n, out); break;
    case DType::i64: convert_to<int64_t>(h.data(), n, out); break;
    case DType::u16: convert_to<uint16_t>(h.data(), n, out); break;
    case DType::u32: convert_to<uint32_t>(h.data(), n, out); break;
    case DType::bf16: {
      const auto* s = h.data_as<uint16_t>();
      for (size_t i = 0; i < n; ++i) out[i] = static_cast<R>(bf16_bits_to_float(s[i]));
      break;
    }
    case DType::f16: throw Error("Tensor::to_doubles", "a dtype other than f16", "f16");
  }
  return out;
}

std::vector<double> Tensor::to_doubles() const { return host_values<double>(*this); }
std::vector<int64_t> Tensor::to_ints() const { return host_values<int64_t>(*this); }

std::vector<double> scalar_values(const std::vector<Tensor>& scalars) {
  std::vector<double> out;
  if (scalars.empty()) return out;
  for (size_t i = 0; i < scalars.size(); ++i) {
    const Tensor& t = scalars[i];
    UM_CHECK(t.defined() && t.numel() == 1, detail::concat("scalar_values: tensor ", i, " with one element"),
             t.defined() ? t.desc() : "undefined");
    UM_CHECK(t.dtype() != DType::f16, detail::concat("scalar_values: tensor ", i, " of a dtype other than f16"),
             t.desc());
    check_same_device(scalars[0], t, "scalar_values");
  }
  const Device dev = scalars[0].device();
  out.reserve(scalars.size());
  if (dev.is_cpu()) {
    for (const Tensor& t : scalars) out.push_back(t.to_doubles()[0]);
    return out;
  }
  // One 8-byte slot per value (every dtype fits) in the step's arena (no allocation that would
  // synchronise): device-to-device copies queue on the stream, then one copy to the host synchronises once.
  constexpr size_t kSlot = 8;
  auto* base = static_cast<char*>(arena_for(dev).alloc_bytes(scalars.size() * kSlot));
  for (size_t i = 0; i < scalars.size(); ++i)
    copy_bytes(base + i * kSlot, dev, scalars[i].data(), dev, scalars[i].nbytes());
  std::vector<char> host(scalars.size() * kSlot);
  copy_bytes(host.data(), Device::cpu(), base, dev, host.size());
  for (size_t i = 0; i < scalars.size(); ++i) {
    Tensor one = Tensor::wrap(host.data() + i * kSlot, Shape{1}, scalars[i].dtype(), Device::cpu());
    out.push_back(one.to_doubles()[0]);
  }
  return out;
}

std::string Tensor::desc() const {
  if (!impl_) return "<undefined tensor>";
  std::ostringstream os;
  if (!impl_->name.empty()) os << impl_->name << " ";
  os << shape().str() << " " << dtype_name(dtype()) << " " << device().str();
  return os.str();
}

void check_shape(const Tensor& t, const Shape& expected, const char* what) {
  if (!t.defined() || t.shape() != expected)
    throw Error(what, "shape " + expected.str(), t.defined() ? t.desc() : "an undefined tensor");
}

void check_same_device(const Tensor& a, const Tensor& b, const char* what) {
  if (!(a.device() == b.device()))
    throw Error(what, "tensors on one device", a.desc() + " and " + b.desc());
}

void check_dtype(const Tensor& t, DType expected, const char* what) {
  if (t.dtype() != expected) throw Error(what, std::string("dtype ") + dtype_name(expected), t.desc());
}

void check_tensor(const Tensor& t, const Shape& shape, DType dtype, const Tensor& like, const char* what) {
  check_shape(t, shape, what);
  check_dtype(t, dtype, what);
  check_same_device(like, t, what);
}

}  // namespace um
