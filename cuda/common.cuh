// Shared by every CUDA file: error checks, the compute stream, bf16/f32 load-store helpers and the
// dtype dispatch for kernels templated on the activation type (float or __nv_bfloat16).
#pragma once
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "ultramem/core/check.h"
#include "ultramem/core/tensor.h"
#include "src/core/device_memory.h"

#define UM_CUDA(call)                                                                    \
  do {                                                                                   \
    cudaError_t e_ = (call);                                                             \
    if (e_ != cudaSuccess) throw ::um::Error(UM_HERE, #call " to succeed", cudaGetErrorString(e_)); \
  } while (0)

#define UM_CUBLAS(call)                                                                     \
  do {                                                                                      \
    cublasStatus_t s_ = (call);                                                             \
    if (s_ != CUBLAS_STATUS_SUCCESS)                                                        \
      throw ::um::Error(UM_HERE, #call " to succeed", cublasGetStatusString(s_));           \
  } while (0)

// After every launch: the launch error always; in debug builds (ULTRAMEM_SYNC_CHECK) also the
// kernel's own errors, by synchronising.
#ifdef ULTRAMEM_SYNC_CHECK
#define UM_CUDA_LAUNCHED()                 \
  do {                                     \
    UM_CUDA(cudaGetLastError());           \
    UM_CUDA(cudaDeviceSynchronize());      \
  } while (0)
#else
#define UM_CUDA_LAUNCHED() UM_CUDA(cudaGetLastError())
#endif

namespace um::cuda {

using bf16 = __nv_bfloat16;

inline cudaStream_t stream() { return ::um::detail::device_stream(); }
cublasLtHandle_t cublaslt_handle();
// A workspace for cuBLASLt, allocated once.
void* cublaslt_workspace(size_t* bytes);
int sm_count();

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 x) { return __bfloat162float(x); }
template <typename T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <>
__device__ __forceinline__ bf16 from_f32<bf16>(float x) { return __float2bfloat16(x); }
// Two floats rounded to bf16, lo in the low half: one 32-bit register, as mma fragments and the GEMM
// epilogues' shared-memory stores take them.
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// V elements of T moved as one aligned vector (16 bytes for V = 16 / sizeof(T)).
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};
template <int V, typename T>
__device__ __forceinline__ Pack<T, V> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, V>*>(p);
}
template <int V, typename T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, V>& v) {
  *reinterpret_cast<Pack<T, V>*>(p) = v;
}
// The same with the streaming (evict-first) cache hint for 16-byte packs: output that is not read
// again soon does not push what is (a kernel's gathered source) out of L2.
template <int V, typename T>
__device__ __forceinline__ void store_pack_streaming(T* p, const Pack<T, V>& v) {
  if constexpr (sizeof(Pack<T, V>) == 16) __stcs(reinterpret_cast<int4*>(p), *reinterpret_cast<const int4*>(&v));
  else store_pack<V>(p, v);
}

inline unsigned ceil_div(int64_t a, int64_t b) { return unsigned((a + b - 1) / b); }

// 16-byte alignment: what 16-byte vector loads and TMA's global addresses need.
inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Warp-level sums in a fixed order (xor butterfly): deterministic.
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
// Block-wide sum for blockDim.x a multiple of 32 (<= 1024); every thread gets the result.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float partial[32];
  __shared__ float total;
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    int nw = blockDim.x >> 5;
    float s = lane < nw ? partial[lane] : 0.f;
    s = warp_sum(s);
    if (lane == 0) total = s;
  }
  __syncthreads();
  return total;
}

}  // namespace um::cuda

// UM_DISPATCH_ACT(dtype, T, body): runs body with T = float or um::cuda::bf16.
#define UM_DISPATCH_ACT(dtype, T, ...)                                                       \
  do {                                                                                       \
    switch (dtype) {                                                                         \
      case ::um::DType::f32: { using T = float; __VA_ARGS__; break; }                        \
      case ::um::DType::bf16: { using T = ::um::cuda::bf16; __VA_ARGS__; break; }            \
      default:                                                                               \
        throw ::um::Error(UM_HERE, "an f32 or bf16 tensor on the GPU", ::um::dtype_name(dtype)); \
    }                                                                                        \
  } while (0)
