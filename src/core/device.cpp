// Host-side CUDA runtime calls (device queries, memory). Compiled by the C++ compiler; the CUDA
// runtime API needs no nvcc. Without ULTRAMEM_CUDA every query says "no GPU".
#include "ultramem/core/device.h"

#include <cstdlib>
#include <utility>

#include "ultramem/core/check.h"
#include "src/core/device_memory.h"

#if ULTRAMEM_CUDA
#include <cuda_runtime.h>
#define UM_CUDA_RT(call)                                                                 \
  do {                                                                                   \
    cudaError_t e_ = (call);                                                             \
    if (e_ != cudaSuccess) throw ::um::Error(UM_HERE, #call " to succeed", cudaGetErrorString(e_)); \
  } while (0)
#endif

namespace um {

int cuda_device_count() {
#if ULTRAMEM_CUDA
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
#else
  return 0;
#endif
}

bool cuda_available() {
  static const bool available = cuda_device_count() > 0;
  return available;
}

void cuda_set_device(int index) {
#if ULTRAMEM_CUDA
  UM_CUDA_RT(cudaSetDevice(index));
#else
  throw Error("cuda_set_device", "a build with the CUDA backend (ULTRAMEM_CUDA=ON)", "a CPU-only build");
#endif
}

void cuda_synchronize() {
#if ULTRAMEM_CUDA
  if (cuda_available()) UM_CUDA_RT(cudaDeviceSynchronize());
#endif
}

void cuda_mem_info(size_t* free_bytes, size_t* total_bytes) {
#if ULTRAMEM_CUDA
  UM_CUDA_RT(cudaMemGetInfo(free_bytes, total_bytes));
#else
  *free_bytes = *total_bytes = 0;
#endif
}

std::string cuda_device_name() {
#if ULTRAMEM_CUDA
  if (!cuda_available()) return "none";
  int dev = 0;
  UM_CUDA_RT(cudaGetDevice(&dev));
  cudaDeviceProp p;
  UM_CUDA_RT(cudaGetDeviceProperties(&p, dev));
  return p.name;
#else
  return "none";
#endif
}

namespace detail {

static void require_cuda(const char* what) {
#if !ULTRAMEM_CUDA
  throw Error(what, "a build with the CUDA backend (ULTRAMEM_CUDA=ON)", "a CPU-only build");
#else
  if (!cuda_available()) throw Error(what, "a CUDA device", "none (cudaGetDeviceCount == 0)");
#endif
}

void* device_malloc(size_t bytes) {
  require_cuda("device_malloc");
#if ULTRAMEM_CUDA
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
  if (e != cudaSuccess) {
    size_t free_b = 0, total_b = 0;
    cudaGetLastError();
    cudaMemGetInfo(&free_b, &total_b);
    throw Error("cudaMalloc", detail::concat(bytes, " bytes of GPU memory"),
                detail::concat(cudaGetErrorString(e), " with ", free_b, " of ", total_b, " bytes free"));
  }
  return p;
#else
  return nullptr;
#endif
}

void device_free(void* p) {
#if ULTRAMEM_CUDA
  if (p) cudaFree(p);
#endif
}

void device_memcpy(void* dst, bool dst_gpu, const void* src, bool src_gpu, size_t bytes) {
#if ULTRAMEM_CUDA
  cudaMemcpyKind kind = dst_gpu ? (src_gpu ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice)
                                : (src_gpu ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost);
  if (kind == cudaMemcpyDeviceToDevice) {
    // Queued on the compute stream, ordered with the kernels around it (a backward's seed copy, a
    // parameter copy): the host goes on launching, so the GPU does not idle while it waits.
    UM_CUDA_RT(cudaMemcpyAsync(dst, src, bytes, kind, device_stream()));
    return;
  }
  // A copy from or to the host is synchronous: the host reads or frees its side after the call. The
  // device synchronisation also orders it after work on streams other than the compute stream.
  UM_CUDA_RT(cudaDeviceSynchronize());
  UM_CUDA_RT(cudaMemcpy(dst, src, bytes, kind));
#else
  require_cuda("device_memcpy");
#endif
}

void device_memset(void* dst, int byte_value, size_t bytes) {
#if ULTRAMEM_CUDA
  UM_CUDA_RT(cudaMemsetAsync(dst, byte_value, bytes, device_stream()));
#else
  require_cuda("device_memset");
#endif
}

}  // namespace detail

HostBuffer::HostBuffer(size_t bytes) : bytes_(bytes) {
#if ULTRAMEM_CUDA
  if (cuda_available() && cudaHostAlloc(&ptr_, bytes ? bytes : 1, cudaHostAllocDefault) == cudaSuccess) {
    pinned_ = true;
    return;
  }
  cudaGetLastError();  // no pinned memory to be had: fall back to ordinary memory
#endif
  ptr_ = std::malloc(bytes ? bytes : 1);
  if (!ptr_) throw Error("HostBuffer", detail::concat(bytes, " bytes of host memory"), "malloc failed");
}

HostBuffer::~HostBuffer() {
  if (!ptr_) return;
#if ULTRAMEM_CUDA
  if (pinned_) {
    cudaFreeHost(ptr_);
    return;
  }
#endif
  std::free(ptr_);
}

HostBuffer::HostBuffer(HostBuffer&& o) noexcept
    : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)), pinned_(o.pinned_) {}

HostBuffer& HostBuffer::operator=(HostBuffer&& o) noexcept {
  if (this != &o) {
    HostBuffer tmp(std::move(*this));
    ptr_ = std::exchange(o.ptr_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
    pinned_ = o.pinned_;
  }
  return *this;
}

}  // namespace um
