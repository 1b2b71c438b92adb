// swiglu_expert_mlp (the SwiGLU MoE layer's expert MLP: W1's grouped linear, SwiGLU scaled per row, W2's
// grouped linear): CPU values against the ops it composes, a float64 gradcheck, and CUDA against CPU
// ([gpu]; on a Hopper device the fused sm90 kernels: SwiGLU's forward in the epilogue of W1's product, its
// backward in the epilogue of W2's dx product).
#include "grouped_rows.h"
#include "testing.h"
#include "ultramem/core/arena.h"
#include "ultramem/core/tape.h"
#include "ultramem/ops/activation.h"
#include "ultramem/ops/elementwise.h"
#include "ultramem/ops/grouped_linear.h"

using namespace um;
using namespace um::testing;

TEST_CASE("swiglu expert mlp: CPU equals the composed grouped linears and SwiGLU, float64 gradcheck", "[moe][ops]") {
  for (bool gaps : {false, true}) {
    int64_t rows = 0;
    const ops::RowGroups g = groups_of(gaps ? std::vector<int64_t>{3, 0, -1, 4, 2} : std::vector<int64_t>{3, 0, 4, 4}, rows);
    INFO("gaps " << gaps);
    for (DType dt : {DType::f32, DType::f64}) {
      Tensor x = randn({rows, 6}, dt, Device::cpu(), 39), W1 = randn({4, 10, 6}, dt, Device::cpu(), 40);
      Tensor W2 = randn({4, 5, 7}, dt, Device::cpu(), 41), s = randn({rows}, dt, Device::cpu(), 47);
      const Tensor expect = ops::grouped_linear(ops::scale_rows(ops::swiglu(ops::grouped_linear(x, W1, g)), s), W2, g,
                                                ops::GroupedWeight::in_out);
      CHECK(rel_error(ops::swiglu_expert_mlp(x, W1, s, W2, g), expect) < (dt == DType::f32 ? kTolF32 : 1e-15));
    }
    Tensor x = randn({rows, 6}, DType::f64, Device::cpu(), 42), W1 = randn({4, 10, 6}, DType::f64, Device::cpu(), 43);
    Tensor W2 = randn({4, 5, 7}, DType::f64, Device::cpu(), 44), s = randn({rows}, DType::f64, Device::cpu(), 48);
    for (Tensor* t : {&x, &W1, &s, &W2}) t->set_requires_grad(true);
    CHECK(gradcheck([g](const std::vector<Tensor>& in) { return ops::swiglu_expert_mlp(in[0], in[1], in[2], in[3], g); },
                    {x, W1, s, W2}) < kTolGradcheck);
  }
  int64_t rows = 0;
  const ops::RowGroups g = groups_of({2, 2}, rows);
  const Tensor x = randn({rows, 6}, DType::f32, Device::cpu(), 45), s = randn({rows}, DType::f32, Device::cpu(), 49);
  const Tensor W1 = randn({2, 10, 6}, DType::f32, Device::cpu(), 44), W2 = randn({2, 5, 7}, DType::f32, Device::cpu(), 46);
  CHECK_THROWS_WITH(ops::swiglu_expert_mlp(x, randn({2, 12, 6}, DType::f32, Device::cpu(), 50), s, W2, g),
                    Catch::Contains("swiglu_expert_mlp: W1 [groups, 2 h, d] and W2"));
  CHECK_THROWS_WITH(ops::swiglu_expert_mlp(randn({rows, 5}, DType::f32, Device::cpu(), 51), W1, s, W2, g),
                    Catch::Contains("swiglu_expert_mlp: x"));
  CHECK_THROWS_WITH(ops::swiglu_expert_mlp(x, W1, randn({rows + 1}, DType::f32, Device::cpu(), 52), W2, g),
                    Catch::Contains("grouped_linear_swiglu: s"));
  arena_for(Device::cpu()).reset();
}

TEST_CASE("swiglu expert mlp: every subset of inputs needing gradients gets exactly its gradients", "[moe][ops]") {
  int64_t rows = 0;
  const ops::RowGroups g = groups_of({3, 0, -1, 4, 2}, rows);
  const Tensor x = randn({rows, 6}, DType::f64, Device::cpu(), 60), W1 = randn({4, 10, 6}, DType::f64, Device::cpu(), 61);
  const Tensor W2 = randn({4, 5, 7}, DType::f64, Device::cpu(), 62), s = randn({rows}, DType::f64, Device::cpu(), 63);
  const Tensor R = randn({rows, 7}, DType::f64, Device::cpu(), 64);
  // Bit i of mask: input i (x, W1, s, W2) needs a gradient. Returns each input's gradient (empty: none).
  auto run = [&](int mask) {
    std::vector<Tensor> in = {x.to(Device::cpu()), W1.to(Device::cpu()), s.to(Device::cpu()), W2.to(Device::cpu())};
    for (int i = 0; i < 4; ++i) in[size_t(i)].set_requires_grad((mask >> i) & 1);
    Tape tape;
    {
      TapeScope scope(tape);
      const Tensor y = ops::swiglu_expert_mlp(in[0], in[1], in[2], in[3], g);
      tape.backward_from(y, R);
    }
    std::vector<std::vector<double>> grads;
    for (const Tensor& t : in) grads.push_back(grad_of(t).defined() ? grad_of(t).to_doubles() : std::vector<double>{});
    return grads;
  };
  const auto all = run(15);
  for (int mask = 1; mask < 15; ++mask) {
    INFO("mask " << mask);
    const auto got = run(mask);
    for (int i = 0; i < 4; ++i) CHECK(got[size_t(i)] == (((mask >> i) & 1) ? all[size_t(i)] : std::vector<double>{}));
  }
  arena_for(Device::cpu()).reset();
}

TEST_CASE("grouped linear swiglu forward CUDA matches CPU and the composed GPU ops: pair tails, tile edges, gaps",
          "[gpu][moe]") {
  UM_REQUIRE_GPU();
  require_sm90_on_hopper();  // there the default path is the fused kernel
  PoisonArena poison(Device::cuda());
  struct Case {
    int64_t in, pairs;  // W1 [G, 2 pairs, in]; h [rows, 2 pairs], a [rows, pairs]
    std::vector<int64_t> sizes;
  };
  const std::vector<Case> cases = {
      {64, 136, repeat({0, 1, 127, 128, 129, 0, 300}, 4)},  // m-tile edges; pairs 128 + 8 (a 32-pair tail)
      {200, 96, repeat({5, -3, 260, 0, -17, 64}, 6)},       // a 96-pair tile (64- and 32-row boxes), k tail, gaps
      {768, 408, repeat({131, 65, 2}, 9)},                  // the olmoe expert: 3 x 128 + 24 pairs
      {24, 40, repeat({70, 200}, 3)},                       // one tile of 40 pairs (rounded to 64)
      {96, 200, repeat({33, 190}, 2)},                      // 128 + 72 pairs (rounded to 96)
      {64, 136, repeat({300, 129}, 40)},                    // 400 tiles: the n positions turn per wave
  };
  for (const Case& c : cases) {
    int64_t rows = 0;
    const ops::RowGroups g = groups_of(c.sizes, rows);
    const int64_t G = g.count();
    INFO("in " << c.in << " pairs " << c.pairs << " rows " << rows << " groups " << G);
    const Tensor x = rounded(randn({rows, c.in}, DType::f32, Device::cpu(), 60), DType::bf16);
    const Tensor W1 = rounded(randn({G, 2 * c.pairs, c.in}, DType::f32, Device::cpu(), 61, 0.1), DType::bf16);
    const Tensor sc = randn({rows}, DType::f32, Device::cpu(), 62);
    auto run = [&](Device dev, bool fused) {
      const DType dt = dev.is_cuda() ? DType::bf16 : DType::f32;
      Tensor gx = convert(x, dt, dev), gW = convert(W1, dt, dev), gs = sc.to(dev);
      Tensor h = nan_filled({rows, 2 * c.pairs}, dt, dev), a = nan_filled({rows, c.pairs}, dt, dev);
      if (fused && expects_sm90_kernel(dev)) {  // the fused kernel itself: a silent fallback cannot pass
#if ULTRAMEM_CUDA
        REQUIRE(cuda::grouped_linear_swiglu_forward_fused(gx, gW, gs, g, h, a));
#endif
      } else if (fused) {
        ops::grouped_linear_swiglu_forward(gx, gW, gs, g, h, a);
      } else {  // the composition the fused kernel replaces
        ops::grouped_linear_forward(gx, gW, g, h);
        ops::swiglu_forward(h, a, gs);
      }
      return std::vector<std::vector<double>>{h.to_doubles(), a.to_doubles()};
    };
    const auto ref = run(Device::cpu(), true), gpu = run(Device::cuda(), true), again = run(Device::cuda(), true);
    const auto composed = run(Device::cuda(), false);
    CHECK(rel_error(gpu[0], ref[0]) < kTolBF16);
    CHECK(rel_error(gpu[1], ref[1]) < kTolBF16);
    // The epilogue rounds h to bf16 and applies swiglu_forward's arithmetic to it: the same bits.
    CHECK(gpu[0] == composed[0]);
    CHECK(gpu[1] == composed[1]);
    for (size_t i = 0; i < gpu.size(); ++i) CHECK(gpu[i] == again[i]);  // bitwise reproducible
    for (int64_t r : rows_outside(g, rows)) {  // rows of no group: h = 0, a = 0
      for (int64_t col : {int64_t(0), c.pairs, 2 * c.pairs - 1}) CHECK(gpu[0][size_t(r * 2 * c.pairs + col)] == 0.0);
      CHECK(gpu[1][size_t(r * c.pairs + c.pairs - 1)] == 0.0);
    }
    arena_for(Device::cpu()).reset();
  }
}

TEST_CASE("swiglu grouped linear CUDA matches CPU: tile edges, empty groups, gaps, accumulate", "[gpu][moe]") {
  UM_REQUIRE_GPU();
  require_sm90_on_hopper();  // there the default path is the fused kernel
  PoisonArena poison(Device::cuda());
  struct Case {
    int64_t in, out;  // W [G, in, out] (w2's layout); h [rows, 2 in]
    std::vector<int64_t> sizes;
  };
  const std::vector<Case> cases = {
      {64, 136, repeat({0, 1, 127, 128, 129, 0, 300}, 4)},  // m-tile edges (slabs crossing a group's end)
      {200, 72, repeat({5, -3, 260, 0, -17, 64}, 6)},       // n tail (200 = 192 + 8), rows outside every group
      {408, 768, repeat({131, 65, 2}, 9)},                  // the olmoe down projection: tiles 256 + 192 wide
      {24, 40, repeat({70, 200}, 3)},                       // one chunk narrower than 64
      {408, 64, repeat({300, 129}, 20)},                    // 200 tiles: the n positions turn per wave
  };
  for (const Case& c : cases) {
    int64_t rows = 0;
    const ops::RowGroups g = groups_of(c.sizes, rows);
    const int64_t G = g.count();
    INFO("in " << c.in << " out " << c.out << " rows " << rows << " groups " << G);
    const Tensor h = rounded(randn({rows, 2 * c.in}, DType::f32, Device::cpu(), 50), DType::bf16);
    const Tensor W = rounded(randn({G, c.in, c.out}, DType::f32, Device::cpu(), 51, 0.1), DType::bf16);
    const Tensor dy = rounded(randn({rows, c.out}, DType::f32, Device::cpu(), 52), DType::bf16);
    const Tensor dh0 = rounded(randn({rows, 2 * c.in}, DType::f32, Device::cpu(), 53), DType::bf16);
    const Tensor dW0 = randn({G, c.in, c.out}, DType::f32, Device::cpu(), 54);
    const Tensor sc = randn({rows}, DType::f32, Device::cpu(), 55), ds0 = randn({rows}, DType::f32, Device::cpu(), 56);
    for (bool acc : {false, true}) {
      INFO("accumulate " << acc);
      auto run = [&](Device dev) {
        const DType dt = dev.is_cuda() ? DType::bf16 : DType::f32;
        Tensor gh = convert(h, dt, dev), gW = convert(W, dt, dev), gdy = convert(dy, dt, dev), gs = sc.to(dev);
        Tensor a = nan_filled({rows, c.in}, dt, dev), y = nan_filled({rows, c.out}, dt, dev);
        ops::swiglu_forward(gh, a, gs);
        ops::grouped_linear_forward(a, gW, g, y, ops::GroupedWeight::in_out);
        Tensor dh = acc ? convert(dh0, dt, dev) : nan_filled(h.shape(), dt, dev);
        Tensor ds = acc ? ds0.to(dev) : nan_filled({rows}, DType::f32, dev);
        Tensor dW = acc ? dW0.to(dev) : nan_filled(W.shape(), DType::f32, dev);
        if (!acc && expects_sm90_kernel(dev)) {  // the fused kernel itself (it takes no accumulated dh)
#if ULTRAMEM_CUDA
          REQUIRE(cuda::swiglu_grouped_linear_backward_fused(gh, gs, a, gW, gdy, g, GradSlot{dh, acc},
                                                             GradSlot{ds, acc}, GradSlot{dW, acc}));
#endif
        } else {
          ops::swiglu_grouped_linear_backward(gh, gs, a, gW, gdy, g, GradSlot{dh, acc}, GradSlot{ds, acc},
                                              GradSlot{dW, acc});
        }
        return std::vector<std::vector<double>>{y.to_doubles(), dh.to_doubles(), dW.to_doubles(), ds.to_doubles()};
      };
      const auto ref = run(Device::cpu()), gpu = run(Device::cuda()), again = run(Device::cuda());
      CHECK(rel_error(gpu[0], ref[0]) < kTolBF16);
      CHECK(rel_error(gpu[1], ref[1]) < kTolBF16);
      // dW = dy^T a with a = swiglu(h) rounded to bf16 on the GPU (f32 on the CPU): bf16-level differences.
      CHECK(rel_error(gpu[2], ref[2]) < kTolBF16);
      CHECK(rel_error(gpu[3], ref[3]) < kTolBF16);  // ds: dact . swiglu(h) per row
      // Rows outside every group: dh = 0 and ds = 0 (accumulate: unchanged) exactly.
      for (int64_t r : rows_outside(g, rows))
        for (int64_t col : {int64_t(0), c.in, 2 * c.in - 1})
          CHECK(gpu[1][size_t(r * 2 * c.in + col)] == (acc ? ref[1][size_t(r * 2 * c.in + col)] : 0.0));
      for (int64_t r : rows_outside(g, rows)) CHECK(gpu[3][size_t(r)] == (acc ? ref[3][size_t(r)] : 0.0));
      for (size_t i = 0; i < gpu.size(); ++i) CHECK(gpu[i] == again[i]);  // bitwise reproducible
      arena_for(Device::cpu()).reset();
    }
  }
}
