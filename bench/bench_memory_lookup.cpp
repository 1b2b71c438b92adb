// Memory lookup benchmark: the weighted gather (forward) and its backward at the UltraMemV2 227M/1.2B
// release layer's shapes (T = 8 x 2048 tokens, M = 32 slots, V = P = 192, a 2.6M-row shared pool in
// bf16, f32 table gradients) and an UltraMem v1-like layer (E = 4 groups, C = 2 chunks, no pre-values),
// with uniformly random indices; against the device copy ceiling measured in the same run (a 2 GiB
// cudaMemcpy device to device, bytes read + written).
//
// Bytes counted (DRAM traffic the op cannot avoid; re-reads that hit L2 are not counted):
//   forward:  the selected value and pre-value rows, pre_in, weights, indices, the output;
//   backward: the selected rows again, dout and pre_in, dweights and dpre_in written, and every table
//             row some slot touches read and written in f32 (accumulate), or, without accumulate, the
//             whole f32 tables written (memset) plus the touched rows read and written.
// Times: median of kReps calls (CUDA events) after kWarmup; each call includes the op's index check
// (one small device-to-host copy and a stream synchronisation).
#include <algorithm>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <utility>
#include <unordered_set>
#include <vector>

#include "ultramem/core/arena.h"
#include "ultramem/core/device.h"
#include "ultramem/core/tensor.h"
#include "ultramem/ops/memory_lookup.h"
#include "bench/bench_common.h"
#if ULTRAMEM_CUDA
#include <cuda_runtime.h>
#endif

using namespace um;
using bench::median;

namespace {

constexpr int kWarmup = 3;
constexpr int kReps = 15;

#if ULTRAMEM_CUDA
// Median GPU milliseconds of fn() over kReps calls after kWarmup; the arena is reset after each call.
double time_ms(const std::function<void()>& fn) {
  Arena& arena = arena_for(Device::cuda());
  for (int i = 0; i < kWarmup; ++i) {
    fn();
    arena.reset();
  }
  cudaEvent_t start, stop;
  BENCH_CUDA(cudaEventCreate(&start));
  BENCH_CUDA(cudaEventCreate(&stop));
  std::vector<double> ms;
  for (int i = 0; i < kReps; ++i) {
    BENCH_CUDA(cudaEventRecord(start, cudaStreamLegacy));
    fn();
    BENCH_CUDA(cudaEventRecord(stop, cudaStreamLegacy));
    BENCH_CUDA(cudaEventSynchronize(stop));
    float t = 0.f;
    BENCH_CUDA(cudaEventElapsedTime(&t, start, stop));
    ms.push_back(t);
    arena.reset();
  }
  BENCH_CUDA(cudaEventDestroy(start));
  BENCH_CUDA(cudaEventDestroy(stop));
  return median(ms);
}

// Fills a device tensor (f32 or bf16) with N(0, scale^2) values: one random block uploaded, then
// repeated by device copies (the values only need to be finite and varied).
void fill_random(const Tensor& t, uint64_t seed, double scale) {
  const int64_t block = std::min<int64_t>(t.numel(), int64_t(1) << 22);
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd(0.0, scale);
  std::vector<double> v(static_cast<size_t>(block));
  for (auto& x : v) x = nd(rng);
  Tensor host = Tensor::from_doubles(v, Shape{block}, t.dtype());
  const size_t esz = dtype_size(t.dtype()), total = size_t(t.numel()) * esz, first = size_t(block) * esz;
  char* dst = static_cast<char*>(t.data());
  copy_bytes(dst, t.device(), host.data(), Device::cpu(), first);
  for (size_t done = first; done < total;) {
    const size_t n = std::min(done, total - done);
    copy_bytes(dst + done, t.device(), dst, t.device(), n);
    done += n;
  }
}

struct Layer {
  std::string name;
  int64_t T, M, N, V, P, C, groups, value_num, offset;
  bool gelu;
};

struct Row {
  std::string what;
  double ms, bytes;
};

std::vector<Row> bench_layer(const Layer& L, bool with_zeroing) {
  const Device gpu = Device::cuda();
  ops::LookupArgs args;
  args.value_num = L.value_num;
  args.offset = L.offset;
  args.groups = L.groups;
  args.virtual_num = L.groups > 1 ? L.groups * L.value_num : 0;
  args.gelu_gate = L.gelu;
  const int64_t vn = args.virtual_count(), n = L.T * L.M;
  std::mt19937_64 rng(7);
  std::vector<int64_t> idx(static_cast<size_t>(n));
  std::unordered_set<int64_t> rows;
  for (auto& i : idx) {
    i = int64_t(rng() % uint64_t(vn));
    rows.insert((i % L.value_num + L.offset) % L.N);
  }
  const double touched = double(rows.size());
  Tensor indices = Tensor::from_ints(idx, {L.T, L.M}, DType::i32, gpu);
  Tensor weights = Tensor::empty({L.T, L.M, L.C}, DType::f32, gpu);
  Tensor values = Tensor::empty({L.N, L.V}, DType::bf16, gpu);
  Tensor pre_in = L.P ? Tensor::empty({L.T, L.P}, DType::bf16, gpu) : Tensor();
  Tensor pre_values = L.P ? Tensor::empty({L.N, L.P}, DType::bf16, gpu) : Tensor();
  Tensor out = Tensor::empty({L.T, L.groups * L.V}, DType::bf16, gpu);
  Tensor dout = Tensor::empty({L.T, L.groups * L.V}, DType::bf16, gpu);
  Tensor dweights = Tensor::empty(weights.shape(), DType::f32, gpu);
  Tensor dvalues = Tensor::zeros({L.N, L.V}, DType::f32, gpu);
  Tensor dpre_in = L.P ? Tensor::empty(pre_in.shape(), DType::bf16, gpu) : Tensor();
  Tensor dpre_values = L.P ? Tensor::zeros({L.N, L.P}, DType::f32, gpu) : Tensor();
  fill_random(weights, 1, 0.2);
  fill_random(values, 2, 0.02);
  fill_random(dout, 3, 1.0);
  if (L.P) {
    fill_random(pre_in, 4, 1.0);
    fill_random(pre_values, 5, 0.02);
  }

  const double b16 = 2, f32 = 4, rows_in = double(n) * double(L.V + L.P) * b16;
  const double small_in = double(L.T) * L.P * b16 + double(n) * (L.C * f32 + 4);
  const double fwd_bytes = rows_in + small_in + double(L.T) * L.groups * L.V * b16;
  const double table_rmw = touched * double(L.V + L.P) * f32 * 2;
  const double bwd_bytes = rows_in + small_in + double(L.T) * L.groups * L.V * b16 + double(n) * L.C * f32 +
                           double(L.T) * L.P * b16 + table_rmw;
  const double memset_bytes = double(L.N) * double(L.V + L.P) * f32;

  auto forward = [&] {
    ops::memory_lookup_forward(indices, weights, values, Tensor(), pre_in, pre_values, args, out, Tensor());
  };
  auto backward = [&](bool acc) {
    return [&, acc] {
      ops::memory_lookup_backward(indices, weights, values, Tensor(), pre_in, pre_values, args, dout, dweights, false,
                                  dvalues, acc, dpre_in, false, dpre_values, acc);
    };
  };
  std::vector<Row> r;
  r.push_back({L.name + " forward", time_ms(forward), fwd_bytes});
  r.push_back({L.name + " backward (accumulate)", time_ms(backward(true)), bwd_bytes});
  if (with_zeroing)  // the first layer of a step to write the pool's gradient
    r.push_back({L.name + " backward (zero + write)", time_ms(backward(false)), bwd_bytes + memset_bytes});
  std::printf("%s: %lld tokens x %lld slots, %lld-row pool, %.0f rows touched\n", L.name.c_str(), (long long)L.T,
              (long long)L.M, (long long)L.N, touched);
  return r;
}

// The device copy ceiling: a 2 GiB device-to-device cudaMemcpy, bytes read + written.
Row copy_ceiling() {
  const size_t bytes = size_t(2) << 30;
  void *src = nullptr, *dst = nullptr;
  BENCH_CUDA(cudaMalloc(&src, bytes));
  BENCH_CUDA(cudaMalloc(&dst, bytes));
  BENCH_CUDA(cudaMemset(src, 1, bytes));
  const double ms =
      time_ms([&] { BENCH_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, cudaStreamLegacy)); });
  BENCH_CUDA(cudaFree(src));
  BENCH_CUDA(cudaFree(dst));
  return {"device copy (ceiling)", ms, 2.0 * double(bytes)};
}

int run_gpu() {
  std::printf("bench-memory-lookup on %s: bf16 values, f32 weights and table gradients, median of %d after %d\n",
              cuda_device_name().c_str(), kReps, kWarmup);
  // UltraMemV2 227M/1.2B: knum 360, 20 memory layers -> 360^2 * 20 = 2,592,000 pool rows; share ratio 0.5
  // -> knum' = floor(sqrt(2592000 * 0.5)) = 1138 keys per side, 1138^2 rows per layer; layer 19's offset.
  const Layer v2{"v2 227m-1.2b", 8 * 2048, 32, 2592000, 192, 192, 1, 1, 1138 * 1138, 19 * 360 * 360, true};
  // UltraMem v1-like: E = 4 implicit expansion groups over a 648,000-row physical table, 2 cores.
  const Layer v1{"v1-like E4 C2", 8 * 2048, 32, 648000, 192, 0, 2, 4, 648000, 0, false};
  std::vector<Row> rows{copy_ceiling()};
  const double ceiling = rows[0].bytes / (rows[0].ms * 1e-3);
  for (const auto& [L, with_zeroing] : {std::pair{v2, true}, std::pair{v1, false}}) {
    std::vector<Row> r = bench_layer(L, with_zeroing);
    rows.insert(rows.end(), r.begin(), r.end());
    arena_for(Device::cuda()).reset();
  }
  std::printf("\n| what | ms | GB/s | of copy |\n|---|---:|---:|---:|\n");
  for (const Row& r : rows) {
    const double rate = r.bytes / (r.ms * 1e-3);
    std::printf("| %s | %.3f | %.0f | %.0f%% |\n", r.what.c_str(), r.ms, rate / 1e9, 100.0 * rate / ceiling);
  }
  return 0;
}
#endif

}  // namespace

int main() {
  try {
#if ULTRAMEM_CUDA
    if (cuda_available()) return run_gpu();
#endif
    std::printf("bench-memory-lookup: no CUDA device in this process; this benchmark measures GPU gather "
                "bandwidth only, nothing to do.\n");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench-memory-lookup: %s\n", e.what());
    return 1;
  }
}
