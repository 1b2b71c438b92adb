// Per-process CUDA state: the compute stream, the cuBLASLt handle and its workspace.
#include "common.cuh"

namespace um::detail {
cudaStream_t device_stream() {
  // The legacy default stream: every kernel and cuBLASLt call is ordered on it, and host copies
  // (cudaMemcpy) synchronise with it. A non-default stream comes with graph capture.
  return cudaStreamLegacy;
}
}  // namespace um::detail

namespace um::cuda {

cublasLtHandle_t cublaslt_handle() {
  static cublasLtHandle_t h = [] {
    cublasLtHandle_t x;
    UM_CUBLAS(cublasLtCreate(&x));
    return x;
  }();
  return h;
}

void* cublaslt_workspace(size_t* bytes) {
  static constexpr size_t kBytes = size_t(32) << 20;  // Hopper kernels want up to 32 MiB
  static void* ws = [] {
    void* p = nullptr;
    UM_CUDA(cudaMalloc(&p, kBytes));
    return p;
  }();
  *bytes = kBytes;
  return ws;
}

int sm_count() {
  static int n = [] {
    int dev = 0, c = 0;
    UM_CUDA(cudaGetDevice(&dev));
    UM_CUDA(cudaDeviceGetAttribute(&c, cudaDevAttrMultiProcessorCount, dev));
    return c;
  }();
  return n;
}

}  // namespace um::cuda
