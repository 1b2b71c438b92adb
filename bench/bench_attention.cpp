// Attention forward and backward: time per call (median of kReps after kWarmup, CUDA events) and
// achieved TFLOP/s, bf16 on the GPU. Causal attention does half the T^2 work:
//   forward  = 2 matmuls (Q K^T, P V) * 2 flops * B * H * T^2 * D / 2
//   backward = 2.5 x forward (5 matmuls; the dq kernel's recomputation of S and dP is not counted)
// Without a GPU it times a tiny f32 CPU case (the CPU training path) and says so.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "ultramem/core/arena.h"
#include "ultramem/core/device.h"
#include "ultramem/ops/attention.h"
#include "ultramem/ops/elementwise.h"
#include "bench/bench_common.h"
#if ULTRAMEM_CUDA
#include <cuda_runtime.h>
#endif

using namespace um;
using bench::median;

namespace {

constexpr int kWarmup = 5;
constexpr int kReps = 25;

struct Case {
  int64_t B, T, H, D;
  std::string name() const {
    char s[96];
    std::snprintf(s, sizeof s, "B=%lld T=%lld H=%lld D=%lld", (long long)B, (long long)T, (long long)H, (long long)D);
    return s;
  }
  double forward_flops() const { return 4.0 * double(B) * double(H) * double(T) * double(T) * double(D) / 2.0; }
};

struct Row {
  std::string name;
  double fwd_ms, bwd_ms, fwd_tflops, bwd_tflops;
};


// N(0, 1) values (f32 on the host), converted to `dtype` on `device`.
Tensor random_tensor(const Shape& shape, DType dtype, Device device, uint64_t seed) {
  Tensor host = Tensor::empty(shape, DType::f32);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  float* p = host.data_as<float>();
  for (int64_t i = 0; i < host.numel(); ++i) p[i] = nd(rng);
  if (device.is_cpu() && dtype == DType::f32) return host;
  Tensor staged = host.to(device), out = Tensor::empty(shape, dtype, device);
  ops::cast_forward(staged, out);
  return out;
}

// Times fn: median milliseconds over kReps calls after kWarmup.
double time_ms(Device device, const std::function<void()>& fn) {
  for (int i = 0; i < kWarmup; ++i) fn();
  std::vector<double> ms;
#if ULTRAMEM_CUDA
  if (device.is_cuda()) {
    cudaEvent_t start, stop;
    cudaEventCreate(&start);
    cudaEventCreate(&stop);
    for (int i = 0; i < kReps; ++i) {
      cudaEventRecord(start);
      fn();
      cudaEventRecord(stop);
      cudaEventSynchronize(stop);
      float t = 0.f;
      cudaEventElapsedTime(&t, start, stop);
      ms.push_back(t);
    }
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    if (cudaGetLastError() != cudaSuccess) throw Error("bench-attention", "CUDA events to work", "an error");
    return median(ms);
  }
#endif
  for (int i = 0; i < kReps; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    fn();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  return median(ms);
}

Row run_case(const Case& c, DType dtype, Device device) {
  const Shape qkv_shape{c.B, c.T, 3 * c.H * c.D}, y_shape{c.B, c.T, c.H * c.D};
  Tensor qkv = random_tensor(qkv_shape, dtype, device, 1);
  Tensor dy = random_tensor(y_shape, dtype, device, 2);
  Tensor y = Tensor::empty(y_shape, dtype, device);
  Tensor lse = Tensor::empty({c.B, c.H, c.T}, ops::attention_lse_dtype(qkv), device);
  Tensor dqkv = Tensor::empty(qkv_shape, dtype, device);
  Arena& arena = arena_for(device);  // the backward pass takes its delta buffer from here
  const double fwd = time_ms(device, [&] { ops::attention_forward(qkv, y, lse, c.H, c.H); });
  const double bwd = time_ms(device, [&] {
    ops::attention_backward(qkv, y, lse, dy, dqkv, c.H, c.H, -1.f, false);
    arena.reset();
  });
  const double f = c.forward_flops();
  return {c.name(), fwd, bwd, f / (fwd * 1e-3) / 1e12, 2.5 * f / (bwd * 1e-3) / 1e12};
}

}  // namespace

int main() {
  try {
    std::vector<Row> rows;
    std::string where;
    if (cuda_available()) {
      where = "GPU " + cuda_device_name() + ", bf16 tensor-core kernels";
      for (const Case& c : {Case{32, 1024, 12, 64}, Case{8, 2048, 12, 64}, Case{4, 4096, 16, 128}}) {
        std::printf("running %s ...\n", c.name().c_str());
        std::fflush(stdout);
        rows.push_back(run_case(c, DType::bf16, Device::cuda()));
      }
    } else {
      where = "no GPU in this process: the f32 CPU reference on a tiny case (the CPU training path)";
      rows.push_back(run_case(Case{4, 128, 4, 32}, DType::f32, Device::cpu()));
    }
    // The CPU reaches GFLOP/s, not TFLOP/s: print it in the unit that shows digits.
    const bool gpu = cuda_available();
    const double unit = gpu ? 1.0 : 1e3;
    const char* rate = gpu ? "TFLOP/s" : "GFLOP/s";
    std::printf("\nattention, causal, %s; median of %d after %d warm-up\n", where.c_str(), kReps, kWarmup);
    std::printf("%-28s %10s %8s %-7s %10s %8s %-7s\n", "case", "fwd ms", "fwd", rate, "bwd ms", "bwd", rate);
    for (const Row& r : rows)
      std::printf("%-28s %10.3f %16.2f %10.3f %16.2f\n", r.name.c_str(), r.fwd_ms, r.fwd_tflops * unit, r.bwd_ms,
                  r.bwd_tflops * unit);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench-attention: %s\n", e.what());
    return 1;
  }
}
