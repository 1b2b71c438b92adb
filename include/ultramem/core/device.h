// Where a tensor lives. The CUDA backend may be compiled out (ULTRAMEM_CUDA=0) or present
// without a GPU at run time; cuda_available() tells which.
#pragma once
#include <cstdint>
#include <string>

namespace um {

struct Device {
  enum class Kind : uint8_t { cpu, cuda };
  Kind kind = Kind::cpu;
  int index = 0;

  static Device cpu() { return {Kind::cpu, 0}; }
  static Device cuda(int i = 0) { return {Kind::cuda, i}; }
  bool is_cpu() const { return kind == Kind::cpu; }
  bool is_cuda() const { return kind == Kind::cuda; }
  bool operator==(const Device& o) const { return kind == o.kind && index == o.index; }
  std::string str() const { return is_cpu() ? "cpu" : "cuda:" + std::to_string(index); }
};

// True when the library was built with CUDA and at least one GPU answers.
bool cuda_available();
int cuda_device_count();
void cuda_set_device(int index);
void cuda_synchronize();
// Bytes free / total on the current GPU.
void cuda_mem_info(size_t* free_bytes, size_t* total_bytes);
std::string cuda_device_name();

// Host memory for buffers that are copied to the GPU often (training batches): page-locked
// (cudaHostAlloc) when a GPU is present, so the copy runs at full speed without a staging copy;
// ordinary memory otherwise. Contents are uninitialised.
class HostBuffer {
 public:
  HostBuffer() = default;
  explicit HostBuffer(size_t bytes);
  ~HostBuffer();
  HostBuffer(HostBuffer&& o) noexcept;
  HostBuffer& operator=(HostBuffer&& o) noexcept;
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;
  void* data() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  bool pinned() const { return pinned_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  bool pinned_ = false;
};

}  // namespace um
