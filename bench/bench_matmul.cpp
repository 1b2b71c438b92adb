// Matmul benchmark of the linear op family on the GPT-2 124M training shapes (B*T = 32768 rows):
// forward (with its fused bias/GELU epilogue), dx = dz . W and dW = dz^T . x (f32) per layer, plus an
// 8192^3 bf16 GEMM as the device's ceiling. GPU times: cudaEvents around each call, warm-up, median of
// 30 reps, inputs rotated over enough buffers that L2 cannot hold them, random data.
// Without a GPU it times the CPU path on the tiny model's shapes instead (and says so).
//
//   bench-matmul [--rows N] [--reps R]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "ultramem/core/arena.h"
#include "ultramem/core/tensor.h"
#include "ultramem/ops/linear.h"
#include "bench/bench_common.h"

#if ULTRAMEM_CUDA
#include <cuda_runtime.h>
#endif

using namespace um;
using bench::median;
using ops::Activation;

namespace {

struct Layer {
  const char* name;
  int64_t in, out;
  bool bias;
  Activation act;
  int per_step;  // how many such layers one model step runs (GPT-2 124M: 12 blocks, one LM head)
};

struct Result {
  std::string name;
  double ms = 0, flops = 0;
};


// A pool of N(0, 1) values in `dtype`; tensors are filled from it at rotating offsets.
struct RandomPool {
  Tensor host;
  int64_t next = 0;
  RandomPool(DType dtype, int64_t n) {
    std::mt19937_64 rng(2024);
    std::normal_distribution<double> nd(0.0, 1.0);
    std::vector<double> v(static_cast<size_t>(n));
    for (auto& x : v) x = nd(rng);
    host = Tensor::from_doubles(v, Shape{n}, dtype);
  }
  // Fills t (same dtype) with pool data: one upload, then doubling device copies.
  void fill(const Tensor& t) {
    const size_t esz = dtype_size(t.dtype()), total = size_t(t.numel()) * esz;
    const size_t pool_bytes = size_t(host.numel()) * esz;
    const size_t offset = size_t(next % host.numel()) * esz;
    next += 7919;
    const size_t first = std::min(total, pool_bytes - offset);
    char* dst = static_cast<char*>(t.data());
    copy_bytes(dst, t.device(), static_cast<const char*>(host.data()) + offset, Device::cpu(), first);
    for (size_t done = first; done < total;) {
      const size_t n = std::min(done, total - done);
      copy_bytes(dst + done, t.device(), dst, t.device(), n);
      done += n;
    }
  }
};

#if ULTRAMEM_CUDA
// Median GPU time in ms of fn(rep) over `reps` timed calls after `warmup` untimed ones.
double time_gpu(const std::function<void(int)>& fn, int reps, int warmup = 5) {
  for (int i = 0; i < warmup; ++i) fn(i);
  std::vector<cudaEvent_t> ev(size_t(2 * reps));
  for (auto& e : ev) BENCH_CUDA(cudaEventCreate(&e));
  for (int i = 0; i < reps; ++i) {
    BENCH_CUDA(cudaEventRecord(ev[size_t(2 * i)], cudaStreamLegacy));
    fn(i);
    BENCH_CUDA(cudaEventRecord(ev[size_t(2 * i + 1)], cudaStreamLegacy));
  }
  BENCH_CUDA(cudaEventSynchronize(ev.back()));
  BENCH_CUDA(cudaGetLastError());
  std::vector<double> ms(static_cast<size_t>(reps));
  for (int i = 0; i < reps; ++i) {
    float t = 0;
    BENCH_CUDA(cudaEventElapsedTime(&t, ev[size_t(2 * i)], ev[size_t(2 * i + 1)]));
    ms[size_t(i)] = t;
  }
  for (auto& e : ev) BENCH_CUDA(cudaEventDestroy(e));
  return median(ms);
}
#endif

double time_cpu(const std::function<void(int)>& fn, int reps) {
  fn(0);
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    fn(i);
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  return median(ms);
}

// Forward, dx and dW of one layer (and, with GELU or a bias, the whole backward) on `device`.
std::vector<Result> bench_layer(const Layer& L, int64_t rows, DType dt, Device dev, RandomPool& pool, int reps) {
  const size_t set_bytes = size_t(rows * L.in + L.out * L.in + rows * L.out) * dtype_size(dt);
  // Enough input sets that consecutive reps never find their inputs in a 50 MB L2.
  const int sets = dev.is_cuda() ? int(std::clamp<size_t>((size_t(384) << 20) / set_bytes + 1, 2, 8)) : 1;
  std::vector<Tensor> xs, ws, bs, dys;
  for (int s = 0; s < sets; ++s) {
    xs.push_back(Tensor::empty({rows, L.in}, dt, dev));
    ws.push_back(Tensor::empty({L.out, L.in}, dt, dev));
    dys.push_back(Tensor::empty({rows, L.out}, dt, dev));
    bs.push_back(L.bias ? Tensor::empty({L.out}, dt, dev) : Tensor());
    for (const Tensor* t : {&xs.back(), &ws.back(), &dys.back(), &bs.back()})
      if (t->defined()) pool.fill(*t);
  }
  const DType gdt = dev.is_cuda() ? DType::f32 : dt;  // weight gradients: f32 masters on the GPU
  Tensor y = Tensor::empty({rows, L.out}, dt, dev);
  Tensor pre = L.act != Activation::none ? Tensor::empty({rows, L.out}, dt, dev) : Tensor();
  Tensor dx = Tensor::empty({rows, L.in}, dt, dev), dW = Tensor::empty({L.out, L.in}, gdt, dev);
  Tensor db = L.bias ? Tensor::empty({L.out}, gdt, dev) : Tensor();
  pool.fill(pre.defined() ? pre : y);  // GELU's backward reads the saved pre-activation
  Arena& arena = arena_for(dev);
  auto timed = [&](const std::function<void(int)>& fn) {
    auto run = [&](int i) {
      fn(i % sets);
      arena.reset();  // backward scratch (dz, partial sums) comes from the arena
    };
#if ULTRAMEM_CUDA
    if (dev.is_cuda()) return time_gpu(run, reps);
#endif
    return time_cpu(run, reps);
  };
  const double gemm_flops = 2.0 * double(rows) * double(L.in) * double(L.out);
  char shape[96];
  std::snprintf(shape, sizeof(shape), "%s fwd %lldx%lld->%lld%s%s", L.name, (long long)rows, (long long)L.in,
                (long long)L.out, L.bias ? " +b" : "", L.act == Activation::gelu ? " gelu" : "");
  const std::string name = L.name;
  auto forward = [&](int s) { ops::linear_forward(xs[s], ws[s], bs[s], L.act, y, pre); };
  auto backward_dx = [&](int s) {
    ops::linear_backward(xs[s], ws[s], dys[s], Tensor(), Activation::none, GradSlot{dx, false}, GradSlot{}, GradSlot{});
  };
  auto backward_dW = [&](int s) {
    ops::linear_backward(xs[s], ws[s], dys[s], Tensor(), Activation::none, GradSlot{}, GradSlot{dW, true}, GradSlot{});
  };
  // The whole backward as training runs it: GELU backward and bias-gradient pass plus both GEMMs.
  auto backward_all = [&](int s) {
    ops::linear_backward(xs[s], ws[s], dys[s], pre, L.act, GradSlot{dx, false}, GradSlot{dW, true},
                         GradSlot{db, true});
  };
  std::vector<Result> r;
  r.push_back({shape, timed(forward), gemm_flops});
  r.push_back({name + " dx", timed(backward_dx), gemm_flops});
  r.push_back({name + " dW (+=)", timed(backward_dW), gemm_flops});
  if (L.bias || L.act != Activation::none)
    r.push_back({name + (L.act == Activation::gelu ? " backward total (dgelu, db)" : " backward total (db)"),
                 timed(backward_all), 2 * gemm_flops});
  return r;
}

void print_table(const std::vector<Result>& rows, double ceiling_flops_per_s, const char* unit, double unit_scale) {
  std::printf("\n%-46s %10s %10s %9s\n", "shape", "time ms", unit, "% ceil");
  for (const Result& r : rows) {
    const double rate = r.flops / (r.ms * 1e-3);
    if (ceiling_flops_per_s > 0)
      std::printf("%-46s %10.3f %10.1f %8.1f%%\n", r.name.c_str(), r.ms, rate / unit_scale,
                  100.0 * rate / ceiling_flops_per_s);
    else
      std::printf("%-46s %10.3f %10.1f %9s\n", r.name.c_str(), r.ms, rate / unit_scale, "-");
  }
}

int parse_int(int argc, char** argv, const char* flag, int fallback) {
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], flag) == 0) return std::atoi(argv[i + 1]);
  return fallback;
}

#if ULTRAMEM_CUDA
int run_gpu(int argc, char** argv) {
  const int64_t rows = parse_int(argc, argv, "--rows", 32768);
  const int reps = std::max(20, parse_int(argc, argv, "--reps", 30));
  const Device dev = Device::cuda();
  std::printf("bench-matmul on %s: bf16 activations, f32 weight gradients, %lld rows, median of %d reps\n",
              cuda_device_name().c_str(), (long long)rows, reps);
  RandomPool pool(DType::bf16, int64_t(1) << 24);
  // Ceiling: a square bf16 GEMM with no epilogue.
  const int64_t sq = 8192;
  std::vector<Tensor> xs, ws;
  for (int s = 0; s < 2; ++s) {
    xs.push_back(Tensor::empty({sq, sq}, DType::bf16, dev));
    ws.push_back(Tensor::empty({sq, sq}, DType::bf16, dev));
    pool.fill(xs.back());
    pool.fill(ws.back());
  }
  Tensor y = Tensor::empty({sq, sq}, DType::bf16, dev);
  auto square_gemm = [&](int i) { ops::linear_forward(xs[i % 2], ws[i % 2], Tensor(), Activation::none, y, Tensor()); };
  const double ceil_ms = time_gpu(square_gemm, reps);
  const double ceiling = 2.0 * double(sq) * sq * sq / (ceil_ms * 1e-3);
  xs.clear();
  ws.clear();
  y = Tensor();
  std::vector<Result> results{{"bf16 GEMM 8192^3 (ceiling)", ceil_ms, 2.0 * double(sq) * sq * sq}};

  const Layer layers[] = {{"qkv", 768, 2304, true, Activation::none, 12},
                          {"attn proj", 768, 768, true, Activation::none, 12},
                          {"fc", 768, 3072, true, Activation::gelu, 12},
                          {"fc proj", 3072, 768, true, Activation::none, 12},
                          {"lm head", 768, 50304, false, Activation::none, 1}};
  double step_ms = 0, step_flops = 0;
  for (const Layer& L : layers) {
    std::vector<Result> r = bench_layer(L, rows, DType::bf16, dev, pool, reps);
    for (size_t i = 0; i < 3; ++i) {  // forward, dx, dW
      step_ms += L.per_step * r[i].ms;
      step_flops += L.per_step * r[i].flops;
    }
    results.insert(results.end(), r.begin(), r.end());
    arena_for(dev).reset();
  }
  BENCH_CUDA(cudaDeviceSynchronize());
  results.push_back({"sum: one GPT-2 124M step's linear GEMMs", step_ms, step_flops});
  print_table(results, ceiling, "TFLOP/s", 1e12);
  return 0;
}
#endif

int run_cpu(int argc, char** argv) {
  const int64_t rows = parse_int(argc, argv, "--rows", 4096);
  const int reps = std::max(3, parse_int(argc, argv, "--reps", 5));
  std::printf("bench-matmul: no CUDA device, timing the CPU path (f32) at small sizes, %lld rows, median of %d\n",
              (long long)rows, reps);
  RandomPool pool(DType::f32, int64_t(1) << 20);
  // The tiny CPU model's shapes: d_model 128, a 4x MLP at d 256 as a mid-size case, and its LM head over
  // one micro-batch of 8 x 128 tokens.
  const Layer layers[] = {{"gemm", 256, 1024, false, Activation::none, 1},
                          {"fc (d 256)", 256, 1024, true, Activation::gelu, 1},
                          {"fc proj (d 256)", 1024, 256, true, Activation::none, 1},
                          {"lm head (d 128)", 128, 50304, false, Activation::none, 1}};
  std::vector<Result> results;
  for (const Layer& L : layers) {
    const int64_t r = L.out == 50304 ? 1024 : rows;
    std::vector<Result> res = bench_layer(L, r, DType::f32, Device::cpu(), pool, reps);
    results.insert(results.end(), res.begin(), res.end());
  }
  print_table(results, 0, "GFLOP/s", 1e9);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
#if ULTRAMEM_CUDA
    if (cuda_available()) return run_gpu(argc, argv);
#endif
    return run_cpu(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench-matmul: %s\n", e.what());
    return 1;
  }
}
