// MoE layer benchmark: forward + backward of the MoE feed-forward (router, dispatch, grouped expert
// GEMMs, combine, aux losses) at 16k tokens, d 768, SwiGLU, bf16 activations with f32 master
// gradients, against the dense SwiGLU MLP of the same active FLOPs in the same binary. Each MoE case runs
// with every expert-GEMM path: our sm90 TMA + wgmma kernel ("auto", the default on Hopper), one
// cublasGemmGroupedBatchedEx call per product ("grouped") and one cublasGemmEx per expert ("loop").
// FLOPs are model FLOPs (6 x active matmul weights x tokens, the router included); the table's last
// column is the MoE layer's achieved TFLOP/s over the dense layer's.
// Times: wall clock over `--reps` synchronised iterations after warm-up (the layer synchronises once per
// forward for the group sizes, so events would measure the same).
//
//   bench-moe [--tokens N] [--reps R] [--warmup W] [--case SUBSTRING] [--mode auto|grouped|loop] [--layer-only]
//             [--shape E,K,H]...
//
// --shape replaces the three standard cases by top-K of E experts of hidden H (repeatable): other
// expert widths at the same layer, e.g. to see what a width that is no multiple of 64 costs.
// --case / --mode / --layer-only narrow the run to one layer and path; --profile dense|moe brackets that layer's
// timed reps with cudaProfilerStart/Stop, for `ncu --profile-from-start off` or `nsys --capture-range=cudaProfilerApi`.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#if ULTRAMEM_CUDA
#include <cuda_profiler_api.h>
#endif

#include "src/nn/moe.h"
#include "ultramem/core/arena.h"
#include "ultramem/core/tape.h"
#include "ultramem/core/tensor.h"
#include "ultramem/ops/activation.h"
#include "ultramem/ops/grouped_linear.h"
#include "ultramem/ops/linear.h"

using namespace um;

namespace {

struct Case {
  std::string name;
  int64_t experts, top_k, hidden;  // expert hidden
  int64_t dense_hidden;            // the dense MLP of equal active FLOPs: top_k * hidden
};

struct Row {
  std::string name, impl;
  double ms = 0, tflops = 0, vs_dense = 0;
};

Tensor param(const Shape& s, double std, uint64_t seed) {
  // Random bf16 compute copy with an f32 gradient buffer, as the trainer's parameters.
  std::vector<double> v(size_t(s.numel()));
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (auto& e : v) {
    // Sum of 4 uniforms: cheap, roughly normal.
    double a = 0;
    for (int i = 0; i < 4; ++i) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      a += double(x >> 11) * 0x1.0p-53 - 0.5;
    }
    e = a * std * 1.7320508;
  }
  Tensor t = Tensor::from_doubles(v, s, DType::bf16, Device::cuda());
  t.set_requires_grad(true);
  t.set_grad(Tensor::zeros(s, DType::f32, Device::cuda()));
  return t;
}

// Median-free mean over reps of one synchronised forward + backward; `profiled` brackets the reps for a profiler.
template <typename F>
double time_ms(F&& step, int warmup, int reps, bool profiled = false) {
  for (int i = 0; i < warmup; ++i) step();
  cuda_synchronize();
#if ULTRAMEM_CUDA
  if (profiled) cudaProfilerStart();
#endif
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) step();
  cuda_synchronize();
#if ULTRAMEM_CUDA
  if (profiled) cudaProfilerStop();
#endif
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / reps;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t tokens = 16384, reps = 10, warmup = 3;
  std::string only_case, only_mode, profile;
  bool layer_only = false;
  std::vector<Case> shapes;
  for (int i = 1; i < argc; ++i) {
    const bool has_value = i + 1 < argc;
    if (!std::strcmp(argv[i], "--layer-only")) layer_only = true;
    else if (has_value && !std::strcmp(argv[i], "--tokens")) tokens = std::atoll(argv[++i]);
    else if (has_value && !std::strcmp(argv[i], "--reps")) reps = std::atoll(argv[++i]);
    else if (has_value && !std::strcmp(argv[i], "--warmup")) warmup = std::atoll(argv[++i]);
    else if (has_value && !std::strcmp(argv[i], "--case")) only_case = argv[++i];
    else if (has_value && !std::strcmp(argv[i], "--mode")) only_mode = argv[++i];
    else if (has_value && !std::strcmp(argv[i], "--profile")) profile = argv[++i];
    else if (has_value && !std::strcmp(argv[i], "--shape")) {
      long long e = 0, k = 0, h = 0;
      char tail = 0;
      if (std::sscanf(argv[++i], "%lld,%lld,%lld%c", &e, &k, &h, &tail) != 3 || e < 1 || k < 1 || k > e || h < 8 ||
          h % 8) {
        std::fprintf(stderr, "bench-moe: --shape wants E,K,H with 1 <= K <= E and H a multiple of 8, got '%s'\n",
                     argv[i]);
        return 2;
      }
      shapes.push_back({"top-" + std::to_string(k) + " of " + std::to_string(e) + ", h " + std::to_string(h), e, k, h,
                        k * h});
    } else {
      std::fprintf(stderr, "bench-moe: unknown or incomplete argument '%s'\n", argv[i]);
      return 2;
    }
  }
  if (tokens < 1 || reps < 1 || warmup < 0 || !(profile.empty() || profile == "dense" || profile == "moe")) {
    std::fprintf(stderr, "bench-moe: --tokens and --reps at least 1, --warmup at least 0, --profile dense or moe\n");
    return 2;
  }
  if (!cuda_available()) {
    std::puts("bench-moe: no CUDA device (or a build without CUDA): nothing to measure.");
    return 0;
  }
#if ULTRAMEM_CUDA
  try {
    const int64_t d = 768;
    const std::vector<Case> cases = !shapes.empty() ? shapes
                                                    : std::vector<Case>{
                                                          {"top-2 of 8, h 4992", 8, 2, 4992, 9984},
                                                          {"top-2 of 8, h 1632 (moe-top2-of-8)", 8, 2, 1632, 3264},
                                                          {"top-8 of 64, h 408 (olmoe-top8-of-64)", 64, 8, 408, 3264},
                                                      };
    const Device dev = Device::cuda();
    Tensor x = param({tokens, d}, 1.0, 1), dy = param({tokens, d}, 1e-2, 2);
    // x is an activation: its gradient has the activation dtype (a persistent buffer, so no arena
    // memory outlives a rep).
    x.set_grad(Tensor::zeros({tokens, d}, DType::bf16, dev));
    const Tensor one = Tensor::from_doubles({1.0}, Shape{1}, DType::f32, dev);  // d(total loss)/d(aux loss)
    std::vector<Row> rows, gemm_rows;
    for (const Case& c : cases) {
      if (!only_case.empty() && c.name.find(only_case) == std::string::npos) continue;
      // Dense SwiGLU MLP with hidden top_k * h: the same active expert FLOPs.
      Tensor wp = param({2 * c.dense_hidden, d}, 0.02, 3), wo = param({d, c.dense_hidden}, 0.02, 4);
      auto dense = [&] {
        Tape tape;
        {
          TapeScope scope(tape);
          Tensor y = ops::linear(ops::swiglu(ops::linear(x, wp, Tensor())), wo, Tensor());
          tape.backward_from(y, dy);
        }
        arena_for(dev).reset();
      };
      const double dense_flops = 6.0 * double(tokens) * 3.0 * double(d) * double(c.dense_hidden);
      Row dr{c.name, "dense MLP h " + std::to_string(c.dense_hidden), time_ms(dense, int(warmup), int(reps), profile == "dense")};
      dr.tflops = dense_flops / dr.ms * 1e-9;
      dr.vs_dense = 1.0;
      rows.push_back(dr);
      std::printf("{\"case\": \"%s\", \"impl\": \"%s\", \"ms\": %.3f, \"tflops\": %.1f}\n", dr.name.c_str(),
                  dr.impl.c_str(), dr.ms, dr.tflops);
      wp = Tensor(), wo = Tensor();

      Tensor router = param({c.experts, d}, 0.02, 5);
      Tensor w1 = param({c.experts, 2 * c.hidden, d}, 0.02, 6), w2 = param({c.experts, c.hidden, d}, 0.02, 7);
      nn::MoeLayerOptions o;
      o.num_experts = c.experts;
      o.swiglu = true;
      o.router = {c.top_k, false, 0.01, 0.001};
      const double moe_flops =
          6.0 * double(tokens) * (double(c.top_k) * 3.0 * double(d) * double(c.hidden) + double(d * c.experts));
      std::vector<std::string> modes = {"grouped", "loop"};
      if (cuda::grouped_gemm_sm90_available()) modes.insert(modes.begin(), "auto");  // = the sm90 kernel here
      if (!only_mode.empty()) {
        if (std::find(modes.begin(), modes.end(), only_mode) == modes.end()) {
          std::fprintf(stderr, "bench-moe: --mode %s is not available here\n", only_mode.c_str());
          return 2;
        }
        modes = {only_mode};
      }
      auto label_of = [](const std::string& mode) {
        return mode == "auto" ? std::string("sm90 TMA + wgmma") : mode;
      };
      for (const std::string& mode : modes) {
        cuda::set_grouped_gemm_mode(mode);
        std::vector<int64_t> counts;
        auto moe = [&] {
          Tape tape;
          {
            TapeScope scope(tape);
            nn::MoeLayerResult r = nn::moe_layer(x, router, w1, w2, o);
            counts = r.plan.counts;
            tape.backward_from({{r.y, dy}, {r.routing.balance_loss, one}, {r.routing.z_loss, one}});
          }
          arena_for(dev).reset();
        };
        Row mr{c.name, "ultramem MoE (" + label_of(mode) + ")", time_ms(moe, int(warmup), int(reps), profile == "moe")};
        mr.tflops = moe_flops / mr.ms * 1e-9;
        mr.vs_dense = mr.tflops / dr.tflops;
        rows.push_back(mr);
        const auto [lo, hi] = std::minmax_element(counts.begin(), counts.end());
        std::printf("{\"case\": \"%s\", \"impl\": \"%s\", \"ms\": %.3f, \"tflops\": %.1f, \"vs_dense\": %.3f, "
                    "\"min_expert_rows\": %lld, \"max_expert_rows\": %lld}\n",
                    mr.name.c_str(), mr.impl.c_str(), mr.ms, mr.tflops, mr.vs_dense, (long long)*lo, (long long)*hi);
      }
      cuda::set_grouped_gemm_mode("auto");

      // The first expert GEMM alone (forward + dx + dW) over N k rows in E equal groups, each path,
      // against one ungrouped linear of the same rows and width (cuBLASLt): the kernels' own speed.
      if (!layer_only) {
        const int64_t R = tokens * c.top_k, width = 2 * c.hidden;
        Tensor xs = param({R, d}, 1.0, 8), gy = param({R, width}, 1e-2, 9);
        xs.set_grad(Tensor::zeros({R, d}, DType::bf16, dev));
        ops::RowGroups g;
        for (int64_t e = 0; e < c.experts; ++e) g.start.push_back(e * R / c.experts);
        for (int64_t e = 0; e < c.experts; ++e) g.size.push_back((e + 1) * R / c.experts - g.start[size_t(e)]);
        const double flops = 6.0 * double(R) * double(d) * double(width);
        Tensor w0 = param({width, d}, 0.02, 10);
        auto ungrouped = [&] {
          Tape tape;
          {
            TapeScope scope(tape);
            tape.backward_from(ops::linear(xs, w0, Tensor()), gy);
          }
          arena_for(dev).reset();
        };
        Row ur{c.name, "w1 GEMM alone: ungrouped linear", time_ms(ungrouped, int(warmup), int(reps))};
        ur.tflops = flops / ur.ms * 1e-9;
        ur.vs_dense = 1.0;
        gemm_rows.push_back(ur);
        for (const std::string& mode : modes) {
          cuda::set_grouped_gemm_mode(mode);
          auto grouped = [&] {
            Tape tape;
            {
              TapeScope scope(tape);
              tape.backward_from(ops::grouped_linear(xs, w1, g), gy);
            }
            arena_for(dev).reset();
          };
          Row gr{c.name, "w1 GEMM alone: " + label_of(mode),
                 time_ms(grouped, int(warmup), int(reps))};
          gr.tflops = flops / gr.ms * 1e-9;
          gr.vs_dense = gr.tflops / ur.tflops;
          gemm_rows.push_back(gr);
        }
        cuda::set_grouped_gemm_mode("auto");
      }
    }
    std::printf("\nMoE layer forward + backward, %lld tokens, d %lld, SwiGLU, bf16, %s\n\n", (long long)tokens,
                (long long)d, cuda_device_name().c_str());
    std::printf("| case | implementation | ms | TFLOP/s | vs dense TFLOP/s |\n|---|---|---|---|---|\n");
    for (const Row& r : rows)
      std::printf("| %s | %s | %.3f | %.1f | %.0f%% |\n", r.name.c_str(), r.impl.c_str(), r.ms, r.tflops,
                  100 * r.vs_dense);
    std::printf("\nExpert GEMM w1 alone (forward + dx + dW, equal groups) vs the ungrouped linear\n\n");
    std::printf("| case | implementation | ms | TFLOP/s | vs ungrouped |\n|---|---|---|---|---|\n");
    for (const Row& r : gemm_rows)
      std::printf("| %s | %s | %.3f | %.1f | %.0f%% |\n", r.name.c_str(), r.impl.c_str(), r.ms, r.tflops,
                  100 * r.vs_dense);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench-moe: error: %s\n", e.what());
    return 1;
  }
#endif
  return 0;
}
