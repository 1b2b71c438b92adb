// One memory layer, forward and forward + backward, at a config's shapes (default: the UltraMemV2
// 227M/1.2B release layer, 8 x 2048 = 16k tokens), bf16 on the GPU: median of kReps after kWarmup
// (CUDA events), the whole layer (query projection and norms, key norms, row/column scores, top-k,
// pre-value projection and gate, weighted gather, value projection; backward into every parameter,
// the shared value pools and the input). bench/torch_memory_layer.py times the same layer's math in
// PyTorch in the same job (bench/run_gpu.sh).
// Usage: bench-memory-layer [CONFIG.json] [--tokens N] [--warmup N] [--reps N].
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "src/nn/memory.h"
#include "ultramem/core/arena.h"
#include "ultramem/core/device.h"
#include "ultramem/ops/elementwise.h"
#include "ultramem/train/config.h"
#include "bench/bench_common.h"
#if ULTRAMEM_CUDA
#include <cuda_runtime.h>
#endif

using namespace um;
using bench::median;


int main(int argc, char** argv) {
  std::string config = std::string(ULTRAMEM_SOURCE_DIR) + "/configs/ultramemv2-227m-1.2b.json";
  int64_t tokens = 16384;
  int warmup = 3, reps = 15;  // --reps 1 --warmup 1: one timed pass (under a profiler)
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--tokens" && i + 1 < argc) tokens = std::stoll(argv[++i]);
    else if (a == "--reps" && i + 1 < argc) reps = std::stoi(argv[++i]);
    else if (a == "--warmup" && i + 1 < argc) warmup = std::stoi(argv[++i]);
    else config = a;
  }
#if !ULTRAMEM_CUDA
  std::puts("bench-memory-layer: built without CUDA; nothing to time (the CPU path is the tests' oracle)");
  return 0;
#else
  if (!cuda_available()) {
    std::puts("bench-memory-layer: no CUDA device; nothing to time");
    return 0;
  }
  try {
    std::ifstream in(config);
    if (!in) throw Error(config, "a readable config", "it cannot be opened");
    train::TrainConfig cfg = train::parse_config(nlohmann::json::parse(in));
    const Device dev = Device::cuda(0);
    nn::ParameterStore ps;
    nn::MemorySystem mem(cfg.model, ps);
    if (mem.empty()) throw Error(config, "a config with memory layers", "none");
    ps.finalize(dev, DType::bf16, 1);
    mem.begin_step();
    const int64_t d = cfg.model.d_model, S = std::min<int64_t>(cfg.data.seq_len, tokens), B = tokens / S;
    Tensor h32 = Tensor::from_doubles(std::vector<double>(size_t(B * S * d), 0.0), {B, S, d}, DType::f32, dev);
    {
      // N(0, 1)-like inputs: the FFN pre-norm output has unit scale.
      std::vector<double> v(size_t(B * S * d));
      uint64_t s = 12345;
      for (auto& x : v) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        x = double(int64_t(s >> 11) % 2000001 - 1000000) * 1.7e-6;
      }
      h32.copy_from(Tensor::from_doubles(v, {B, S, d}, DType::f32));
    }
    Tensor h = Tensor::empty({B, S, d}, DType::bf16, dev), dout = Tensor::empty({B, S, d}, DType::bf16, dev);
    ops::cast_forward(h32, h);
    ops::cast_forward(h32, dout);
    h.set_requires_grad(true);
    Arena& arena = arena_for(dev);
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    auto time_once = [&](bool backward) {
      ps.begin_step();
      h.impl()->grad.reset();
      nn::StepContext ctx;
      ctx.training = backward;
      Tape tape;
      cudaEventRecord(e0, 0);
      {
        TapeScope scope(tape);
        Tensor out = mem.forward(0, h, ctx);
        if (backward) tape.backward_from(out, dout);
      }
      cudaEventRecord(e1, 0);
      cudaEventSynchronize(e1);
      float ms = 0;
      cudaEventElapsedTime(&ms, e0, e1);
      tape.clear();
      arena.reset();
      return double(ms);
    };
    std::vector<double> fwd, both;
    for (int i = 0; i < warmup + reps; ++i) {
      double f = time_once(false), fb = time_once(true);
      if (i >= warmup) {
        fwd.push_back(f);
        both.push_back(fb);
      }
    }
    const auto& m = cfg.model.mem;
    const double flops = mem.flops_per_token() / double(mem.placements().size()) * double(B * S);  // one layer
    std::printf("{\"bench\":\"memory_layer\",\"config\":\"%s\",\"tokens\":%lld,\"fwd_ms\":%.3f,\"fwd_bwd_ms\":%.3f}\n",
                config.c_str(), (long long)(B * S), median(fwd), median(both));
    std::printf("\n| layer | tokens | forward ms | forward+backward ms | matmul TFLOP/s (fwd+bwd) |\n|---|---|---|---|---|\n");
    std::printf("| %s knum %lld kdim %lld vdim %lld pre %lld knn %lld head %lld | %lld | %.3f | %.3f | %.1f |\n",
                m.type.c_str(), (long long)m.knum, (long long)m.kdim, (long long)m.vdim, (long long)m.pre_vdim,
                (long long)m.knn, (long long)m.head, (long long)(B * S), median(fwd), median(both),
                flops / (median(both) * 1e-3) / 1e12);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench-memory-layer: %s\n", e.what());
    return 1;
  }
#endif
}
