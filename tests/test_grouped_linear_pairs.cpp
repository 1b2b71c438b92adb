// grouped_linear_backward_weights: two grouped linears' weight gradients over the same groups (the expert
// MLP's dW1 and dW2). CPU: equal to one grouped_linear_backward each, shapes checked; [gpu]: the sm90
// kernel's one launch for both, bitwise equal to one launch each and close to the CPU.
#include "grouped_rows.h"
#include "testing.h"
#include "ultramem/core/arena.h"
#include "ultramem/ops/grouped_linear.h"

using namespace um;
using namespace um::testing;

TEST_CASE("grouped linear weight gradients in pairs: CPU equals one at a time, shapes checked", "[moe][ops]") {
  int64_t rows = 0;
  const ops::RowGroups g = groups_of({3, 0, -2, 5, 4}, rows);
  const Tensor x1 = randn({rows, 6}, DType::f64, Device::cpu(), 130), W1 = randn({4, 10, 6}, DType::f64, Device::cpu(), 131);
  const Tensor dy1 = randn({rows, 10}, DType::f64, Device::cpu(), 132);
  const Tensor x2 = randn({rows, 5}, DType::f64, Device::cpu(), 133), W2 = randn({4, 5, 7}, DType::f64, Device::cpu(), 134);
  const Tensor dy2 = randn({rows, 7}, DType::f64, Device::cpu(), 135), dW20 = randn(W2.shape(), DType::f64, Device::cpu(), 136);
  Tensor dW1 = Tensor::zeros(W1.shape(), DType::f64, Device::cpu()), dW2 = dW20.to(Device::cpu());
  ops::grouped_linear_backward_weights({x1, W1, dy1, ops::GroupedWeight::out_in, GradSlot{dW1, false}},
                                       {x2, W2, dy2, ops::GroupedWeight::in_out, GradSlot{dW2, true}}, g);
  Tensor e1 = Tensor::zeros(W1.shape(), DType::f64, Device::cpu()), e2 = dW20.to(Device::cpu());
  ops::grouped_linear_backward(x1, W1, dy1, g, GradSlot{}, GradSlot{e1, false});
  ops::grouped_linear_backward(x2, W2, dy2, g, GradSlot{}, GradSlot{e2, true}, ops::GroupedWeight::in_out);
  CHECK(dW1.to_doubles() == e1.to_doubles());
  CHECK(dW2.to_doubles() == e2.to_doubles());
  CHECK(rel_error(dW2, dW20) > 0.01);  // the second product did accumulate something
  // An empty slot is skipped (its tensors are not read); a wrong dy is named.
  ops::grouped_linear_backward_weights({Tensor(), W1, Tensor(), ops::GroupedWeight::out_in, GradSlot{}},
                                       {x2, W2, dy2, ops::GroupedWeight::in_out, GradSlot{dW2, false}}, g);
  CHECK(dW2.to_doubles() == [&] {
    Tensor e = Tensor::zeros(W2.shape(), DType::f64, Device::cpu());
    ops::grouped_linear_backward(x2, W2, dy2, g, GradSlot{}, GradSlot{e, false}, ops::GroupedWeight::in_out);
    return e.to_doubles();
  }());
  CHECK_THROWS_WITH(ops::grouped_linear_backward_weights(
                        {x1, W1, dy1, ops::GroupedWeight::out_in, GradSlot{dW1, false}},
                        {x2, W2, dy1, ops::GroupedWeight::in_out, GradSlot{dW2, false}}, g),
                    Catch::Contains("grouped_linear backward (second product): dy"));
  arena_for(Device::cpu()).reset();
}

TEST_CASE("grouped linear weight gradients in pairs CUDA: one sm90 launch equals one at a time bitwise, and the CPU",
          "[gpu][moe]") {
  UM_REQUIRE_GPU();
  require_sm90_on_hopper();
  PoisonArena poison(Device::cuda());
  struct Product {
    int64_t in, out;
    ops::GroupedWeight layout;
  };
  struct Case {
    Product first, second;
    std::vector<int64_t> sizes;
  };
  const std::vector<Case> cases = {
      // the olmoe expert MLP's dW1 (M 816) and dW2 (M 408): m tails of 48 and 24 rows, empty groups, gaps
      {{768, 816, ops::GroupedWeight::out_in}, {408, 768, ops::GroupedWeight::in_out}, repeat({130, 1, 0, -7, 61}, 6)},
      // different N (n tails 136 = 128 + 8 and 40) and so different n-tiles per block in the two halves
      {{64, 136, ops::GroupedWeight::out_in}, {40, 24, ops::GroupedWeight::in_out}, repeat({0, 127, 129, 300}, 5)},
      // the second product alone fills more than a wave: the pair boundary lies mid-wave
      {{16, 8, ops::GroupedWeight::in_out}, {512, 520, ops::GroupedWeight::out_in}, repeat({200, 64}, 12)},
  };
  for (const Case& c : cases) {
    int64_t rows = 0;
    const ops::RowGroups g = groups_of(c.sizes, rows);
    const int64_t G = g.count();
    struct Host {
      Tensor x, W, dy, dW0;
    };
    auto make = [&](const Product& p, uint64_t seed) {
      const bool oi = p.layout == ops::GroupedWeight::out_in;
      const Shape ws = oi ? Shape{G, p.out, p.in} : Shape{G, p.in, p.out};
      return Host{rounded(randn({rows, p.in}, DType::f32, Device::cpu(), seed), DType::bf16),
                  rounded(randn(ws, DType::f32, Device::cpu(), seed + 1, 0.1), DType::bf16),
                  rounded(randn({rows, p.out}, DType::f32, Device::cpu(), seed + 2), DType::bf16),
                  randn(ws, DType::f32, Device::cpu(), seed + 3)};
    };
    const Host h1 = make(c.first, 140), h2 = make(c.second, 150);
    for (bool acc1 : {false, true}) {
      const bool acc2 = !acc1;
      INFO("first in " << c.first.in << " out " << c.first.out << " second in " << c.second.in << " out "
                       << c.second.out << " rows " << rows << " groups " << G << " accumulate " << acc1 << "/" << acc2);
      // paired: the op (CPU, or the GPU's one launch); else one grouped_linear_backward per product
      auto run = [&](Device dev, bool paired) {
        const DType dt = dev.is_cuda() ? DType::bf16 : DType::f32;
        auto slot = [&](const Host& h, bool acc) { return acc ? h.dW0.to(dev) : nan_filled(h.W.shape(), DType::f32, dev); };
        const ops::GroupedWeightGrad p{convert(h1.x, dt, dev), convert(h1.W, dt, dev), convert(h1.dy, dt, dev),
                                       c.first.layout, GradSlot{slot(h1, acc1), acc1}};
        const ops::GroupedWeightGrad q{convert(h2.x, dt, dev), convert(h2.W, dt, dev), convert(h2.dy, dt, dev),
                                       c.second.layout, GradSlot{slot(h2, acc2), acc2}};
        if (!paired) {
          ops::grouped_linear_backward(p.x, p.W, p.dy, g, GradSlot{}, p.dW, p.layout);
          ops::grouped_linear_backward(q.x, q.W, q.dy, g, GradSlot{}, q.dW, q.layout);
        } else if (expects_sm90_kernel(dev)) {
#if ULTRAMEM_CUDA
          REQUIRE(cuda::grouped_linear_backward_weights_paired(p, q, g));
#endif
        } else {
          ops::grouped_linear_backward_weights(p, q, g);
        }
        return std::vector<std::vector<double>>{p.dW.grad.to_doubles(), q.dW.grad.to_doubles()};
      };
      const auto ref = run(Device::cpu(), true), pair = run(Device::cuda(), true), single = run(Device::cuda(), false);
      CHECK(rel_error(pair[0], ref[0]) < 1e-4);  // f32 master gradients of bf16 products
      CHECK(rel_error(pair[1], ref[1]) < 1e-4);
      CHECK(pair[0] == single[0]);  // a tile computes the same in either launch
      CHECK(pair[1] == single[1]);
      arena_for(Device::cpu()).reset();
    }
  }
}
