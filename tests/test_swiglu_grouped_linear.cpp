// swiglu_grouped_linear (SwiGLU scaled per row, then the grouped linear: the SwiGLU MoE layer's expert
// output): CPU values against the ops it composes, a float64 gradcheck, and CUDA against CPU ([gpu]; on a
// Hopper device the fused sm90 backward, whose epilogue applies SwiGLU's backward to the dx product).
#include "grouped_rows.h"
#include "testing.h"
#include "ultramem/core/arena.h"
#include "ultramem/ops/activation.h"
#include "ultramem/ops/elementwise.h"
#include "ultramem/ops/grouped_linear.h"

using namespace um;
using namespace um::testing;

TEST_CASE("swiglu grouped linear: CPU equals grouped_linear(scale_rows(swiglu(h), s)), float64 gradcheck", "[moe][ops]") {
  for (bool gaps : {false, true}) {
    int64_t rows = 0;
    const ops::RowGroups g = groups_of(gaps ? std::vector<int64_t>{3, 0, -1, 4, 2} : std::vector<int64_t>{3, 0, 4, 4}, rows);
    INFO("gaps " << gaps);
    for (DType dt : {DType::f32, DType::f64}) {
      Tensor h = randn({rows, 10}, dt, Device::cpu(), 40), W = randn({4, 6, 5}, dt, Device::cpu(), 41);
      Tensor s = randn({rows}, dt, Device::cpu(), 47);
      const Tensor expect = ops::grouped_linear(ops::scale_rows(ops::swiglu(h), s), W, g);
      CHECK(rel_error(ops::swiglu_grouped_linear(h, s, W, g), expect) < (dt == DType::f32 ? kTolF32 : 1e-15));
    }
    Tensor h = randn({rows, 10}, DType::f64, Device::cpu(), 42), W = randn({4, 6, 5}, DType::f64, Device::cpu(), 43);
    Tensor s = randn({rows}, DType::f64, Device::cpu(), 48);
    for (Tensor* t : {&h, &s, &W}) t->set_requires_grad(true);
    CHECK(gradcheck([g](const std::vector<Tensor>& in) { return ops::swiglu_grouped_linear(in[0], in[1], in[2], g); },
                    {h, s, W}) < kTolGradcheck);
  }
  int64_t rows = 0;
  const ops::RowGroups g = groups_of({2, 2}, rows);
  Tensor W = randn({2, 6, 5}, DType::f32, Device::cpu(), 44), s = randn({rows}, DType::f32, Device::cpu(), 49);
  CHECK_THROWS_WITH(ops::swiglu_grouped_linear(randn({rows, 9}, DType::f32, Device::cpu(), 45), s, W, g),
                    Catch::Contains("swiglu_grouped_linear: h"));
  CHECK_THROWS_WITH(ops::swiglu_grouped_linear(randn({rows, 12}, DType::f32, Device::cpu(), 46), s, W, g),
                    Catch::Contains("swiglu_grouped_linear: x"));
  CHECK_THROWS_WITH(ops::swiglu_grouped_linear(randn({rows, 10}, DType::f32, Device::cpu(), 46),
                                               randn({rows + 1}, DType::f32, Device::cpu(), 50), W, g),
                    Catch::Contains("swiglu_grouped_linear: s"));
  arena_for(Device::cpu()).reset();
}

TEST_CASE("swiglu grouped linear CUDA matches CPU: tile edges, empty groups, gaps, accumulate", "[gpu][moe]") {
  UM_REQUIRE_GPU();
  require_sm90_on_hopper();  // there the default path is the fused kernel
  PoisonArena poison(Device::cuda());
  struct Case {
    int64_t in, out;  // W [G, out, in]; h [rows, 2 in]
    std::vector<int64_t> sizes;
  };
  const std::vector<Case> cases = {
      {64, 136, repeat({0, 1, 127, 128, 129, 0, 300}, 4)},  // m-tile edges (slabs crossing a group's end)
      {200, 72, repeat({5, -3, 260, 0, -17, 64}, 6)},       // n tail (200 = 192 + 8), rows outside every group
      {408, 768, repeat({131, 65, 2}, 9)},                  // the olmoe down projection: tiles 256 + 192 wide
      {24, 40, repeat({70, 200}, 3)},                       // one chunk narrower than 64
  };
  for (const Case& c : cases) {
    int64_t rows = 0;
    const ops::RowGroups g = groups_of(c.sizes, rows);
    const int64_t G = g.count();
    INFO("in " << c.in << " out " << c.out << " rows " << rows << " groups " << G);
    const Tensor h = rounded(randn({rows, 2 * c.in}, DType::f32, Device::cpu(), 50), DType::bf16);
    const Tensor W = rounded(randn({G, c.out, c.in}, DType::f32, Device::cpu(), 51, 0.1), DType::bf16);
    const Tensor dy = rounded(randn({rows, c.out}, DType::f32, Device::cpu(), 52), DType::bf16);
    const Tensor dh0 = rounded(randn({rows, 2 * c.in}, DType::f32, Device::cpu(), 53), DType::bf16);
    const Tensor dW0 = randn({G, c.out, c.in}, DType::f32, Device::cpu(), 54);
    const Tensor sc = randn({rows}, DType::f32, Device::cpu(), 55), ds0 = randn({rows}, DType::f32, Device::cpu(), 56);
    for (bool acc : {false, true}) {
      INFO("accumulate " << acc);
      auto run = [&](Device dev) {
        const DType dt = dev.is_cuda() ? DType::bf16 : DType::f32;
        Tensor gh = convert(h, dt, dev), gW = convert(W, dt, dev), gdy = convert(dy, dt, dev), gs = sc.to(dev);
        Tensor a = nan_filled({rows, c.in}, dt, dev), y = nan_filled({rows, c.out}, dt, dev);
        ops::swiglu_forward(gh, a, gs);
        ops::grouped_linear_forward(a, gW, g, y);
        Tensor dh = acc ? convert(dh0, dt, dev) : nan_filled(h.shape(), dt, dev);
        Tensor ds = acc ? ds0.to(dev) : nan_filled({rows}, DType::f32, dev);
        Tensor dW = acc ? dW0.to(dev) : nan_filled(W.shape(), DType::f32, dev);
        ops::swiglu_grouped_linear_backward(gh, gs, a, gW, gdy, g, GradSlot{dh, acc}, GradSlot{ds, acc},
                                            GradSlot{dW, acc});
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
