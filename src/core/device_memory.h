// Private: raw GPU memory primitives behind Tensor and Arena (implemented in device.cpp and
// cuda/context.cu). Host code never includes CUDA headers through this file.
#pragma once
#include <cstddef>

typedef struct CUstream_st* cudaStream_t;

namespace um::detail {
void* device_malloc(size_t bytes);
void device_free(void* p);
void device_memcpy(void* dst, bool dst_gpu, const void* src, bool src_gpu, size_t bytes);
void device_memset(void* dst, int byte_value, size_t bytes);
// The stream every kernel of this thread runs on (cuda/context.cu).
cudaStream_t device_stream();
}  // namespace um::detail
