#include <array>
#include <cmath>
#include <limits>

#include "testing.h"
#include "ultramem/ops/linear.h"

using namespace um;
using namespace um::testing;
using ops::Activation;

namespace {

double gelu_ref(double v) { return 0.5 * v * (1 + std::tanh(0.7978845608028654 * (v + 0.044715 * v * v * v))); }

// y = act(x . W^T + b) by the obvious triple loop, in double.
std::vector<double> naive_linear(const Tensor& x, const Tensor& W, const Tensor& b, Activation act) {
  const int64_t out = W.dim(0), in = W.dim(1), rows = x.numel() / in;
  std::vector<double> vx = x.to_doubles(), vw = W.to_doubles();
  std::vector<double> vb = b.defined() ? b.to_doubles() : std::vector<double>();
  std::vector<double> y(size_t(rows * out));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < out; ++j) {
      double s = b.defined() ? vb[size_t(j)] : 0.0;
      for (int64_t k = 0; k < in; ++k) s += vx[size_t(r * in + k)] * vw[size_t(j * in + k)];
      y[size_t(r * out + j)] = act == Activation::gelu ? gelu_ref(s) : s;
    }
  return y;
}

struct LinearResult {
  std::vector<double> y, dx, dW, db;
};

// One forward + backward of linear per entry of `dys` (each seeds y's gradient) without clearing the
// inputs' gradients in between: from the second pass on every gradient slot accumulates.
LinearResult run_linear(const Tensor& x, const Tensor& W, const Tensor& b, Activation act,
                        const std::vector<Tensor>& dys) {
  LinearResult r;
  for (const Tensor& dy : dys) {
    Tape tape;
    TapeScope scope(tape);
    Tensor y = ops::linear(x, W, b, act);
    Tensor loss = Tensor::zeros(Shape{1}, DType::f32, x.device());
    loss.set_requires_grad(true);
    tape.record([y, dy] {
      GradSlot s = grad_slot(y);
      s.grad.copy_from(dy);
    });
    tape.backward(loss);
    r.y = y.to_doubles();
  }
  r.dx = grad_of(x).to_doubles();
  r.dW = grad_of(W).to_doubles();
  if (b.defined()) r.db = grad_of(b).to_doubles();
  return r;
}

}  // namespace

TEST_CASE("linear: CPU forward matches a naive triple loop", "[ops][linear]") {
  struct Case {
    Shape x;
    int64_t out;
  };
  // Odd sizes, a 3-d input, and one larger than the GEMM's cache blocks (k > KC, rows > MC) that also
  // runs multi-threaded.
  for (Case c : {Case{{37, 72}, 50}, Case{{3, 5, 7}, 11}, Case{{1, 1}, 1}, Case{{150, 300}, 70}}) {
    const int64_t in = c.x[-1];
    for (DType dt : {DType::f32, DType::f64}) {
      for (bool bias : {false, true}) {
        for (Activation act : {Activation::none, Activation::gelu}) {
          Tensor x = randn(c.x, dt, Device::cpu(), 1);
          Tensor W = randn({c.out, in}, dt, Device::cpu(), 2, 1.0 / std::sqrt(double(in)));
          Tensor b = bias ? randn({c.out}, dt, Device::cpu(), 3) : Tensor();
          Tensor y = ops::linear(x, W, b, act);
          Shape ys = c.x;
          ys[-1] = c.out;
          REQUIRE(y.shape() == ys);
          double err = rel_error(y.to_doubles(), naive_linear(x, W, b, act));
          INFO("x " << c.x.str() << " out " << c.out << " " << dtype_name(dt) << " bias " << bias << " act "
                    << ops::activation_name(act) << " err " << err);
          CHECK(err < (dt == DType::f32 ? kTolF32 : 1e-13));
        }
      }
    }
  }
  arena_for(Device::cpu()).reset();
}

TEST_CASE("cpu gemm: transposed operands, edge tiles and accumulate", "[ops][linear]") {
  // C (row stride ldc > n) = beta C + A . B for every combination of transposed A and B.
  for (auto [m, n, k] : std::vector<std::array<int64_t, 3>>{{1, 1, 1}, {7, 17, 5}, {130, 200, 300}, {13, 3, 600}}) {
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (bool acc : {false, true}) {
          std::vector<double> a = randn({m, k}, DType::f64, Device::cpu(), 4).to_doubles();
          std::vector<double> bm = randn({k, n}, DType::f64, Device::cpu(), 5).to_doubles();
          const int64_t ldc = n + 3;
          std::vector<double> c = randn({m, ldc}, DType::f64, Device::cpu(), 6).to_doubles(), expect = c;
          // Stored transposed when ta/tb: A(i, p) at a[p*m + i], B(p, j) at b[j*k + p].
          for (int64_t i = 0; i < m; ++i)
            for (int64_t j = 0; j < n; ++j) {
              double s = acc ? c[size_t(i * ldc + j)] : 0.0;
              for (int64_t p = 0; p < k; ++p)
                s += a[size_t(ta ? p * m + i : i * k + p)] * bm[size_t(tb ? j * k + p : p * n + j)];
              expect[size_t(i * ldc + j)] = s;
            }
          cpu::gemm<double>(m, n, k, a.data(), ta ? 1 : k, ta ? m : 1, bm.data(), tb ? 1 : n, tb ? k : 1, c.data(), ldc,
                            acc);
          INFO("m " << m << " n " << n << " k " << k << " ta " << ta << " tb " << tb << " acc " << acc);
          CHECK(rel_error(c, expect) < 1e-13);  // padding columns (j >= n) untouched included
        }
  }
}

TEST_CASE("linear: float64 gradcheck of x, W and b", "[ops][linear]") {
  for (bool bias : {false, true}) {
    for (Activation act : {Activation::none, Activation::gelu}) {
      Tensor x = randn({2, 3, 2, 5}, DType::f64, Device::cpu(), 7);  // three leading dims
      Tensor W = randn({4, 5}, DType::f64, Device::cpu(), 8, 0.5);
      Tensor b = bias ? randn({4}, DType::f64, Device::cpu(), 9) : Tensor();
      x.set_requires_grad(true);
      W.set_requires_grad(true);
      std::vector<Tensor> inputs{x, W};
      if (bias) {
        b.set_requires_grad(true);
        inputs.push_back(b);
      }
      INFO("bias " << bias << " act " << ops::activation_name(act));
      double err = gradcheck(
          [act](const std::vector<Tensor>& in) {
            return ops::linear(in[0], in[1], in.size() > 2 ? in[2] : Tensor(), act);
          },
          inputs);
      CHECK(err < kTolGradcheck);
    }
  }
}

TEST_CASE("linear: gradients accumulate across tied uses", "[ops][linear]") {
  // W and b are used by two layers (as a tied embedding and LM head are): their gradients must add up.
  Tensor x = randn({3, 6}, DType::f64, Device::cpu(), 10);
  Tensor W = randn({6, 6}, DType::f64, Device::cpu(), 11, 0.4);
  Tensor b = randn({6}, DType::f64, Device::cpu(), 12);
  for (const Tensor* t : {&x, &W, &b}) t->set_requires_grad(true);
  double err = gradcheck(
      [](const std::vector<Tensor>& in) {
        return ops::linear(ops::linear(in[0], in[1], in[2], Activation::gelu), in[1], in[2]);
      },
      {x, W, b});
  CHECK(err < kTolGradcheck);
}

TEST_CASE("linear: CPU backward kernel honours accumulate and skips empty slots", "[ops][linear]") {
  const int64_t rows = 9, in = 7, out = 5;
  Tensor x = randn({rows, in}, DType::f64, Device::cpu(), 13);
  Tensor W = randn({out, in}, DType::f64, Device::cpu(), 14);
  Tensor pre = randn({rows, out}, DType::f64, Device::cpu(), 15);
  Tensor dy = randn({rows, out}, DType::f64, Device::cpu(), 16);
  Tensor dx0 = randn({rows, in}, DType::f64, Device::cpu(), 17), dW0 = randn({out, in}, DType::f64, Device::cpu(), 18);
  Tensor db0 = randn({out}, DType::f64, Device::cpu(), 19);
  // Expected: (dz = dy * gelu'(pre)) then prefilled + dz . W, dz^T . x, colsum(dz).
  std::vector<double> vx = x.to_doubles(), vw = W.to_doubles(), vp = pre.to_doubles(), vdy = dy.to_doubles();
  std::vector<double> dz(vdy.size());
  for (size_t i = 0; i < dz.size(); ++i) {
    const double h = 1e-5, v = vp[i];
    dz[i] = vdy[i] * (gelu_ref(v + h) - gelu_ref(v - h)) / (2 * h);
  }
  std::vector<double> ex = dx0.to_doubles(), ew = dW0.to_doubles(), eb = db0.to_doubles();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < out; ++j) {
      const double g = dz[size_t(r * out + j)];
      eb[size_t(j)] += g;
      for (int64_t k = 0; k < in; ++k) {
        ex[size_t(r * in + k)] += g * vw[size_t(j * in + k)];
        ew[size_t(j * in + k)] += g * vx[size_t(r * in + k)];
      }
    }
  ops::linear_backward(x, W, dy, pre, Activation::gelu, GradSlot{dx0, true}, GradSlot{dW0, true}, GradSlot{db0, true});
  CHECK(rel_error(dx0.to_doubles(), ex) < 1e-9);  // the reference derivative is a finite difference
  CHECK(rel_error(dW0.to_doubles(), ew) < 1e-9);
  CHECK(rel_error(db0.to_doubles(), eb) < 1e-9);
  // Only dW requested: dx and db are not touched.
  Tensor keep = dx0.to(Device::cpu());
  ops::linear_backward(x, W, dy, pre, Activation::gelu, GradSlot{}, GradSlot{dW0, false}, GradSlot{});
  CHECK(rel_error(dx0, keep) == 0);
  arena_for(Device::cpu()).reset();
}

TEST_CASE("linear: argument errors name the tensor", "[ops][linear]") {
  Tensor x = randn({4, 3}, DType::f32, Device::cpu(), 20);
  Tensor W = randn({5, 4}, DType::f32, Device::cpu(), 21);
  CHECK_THROWS_WITH(ops::linear(x, W, Tensor()),
                    Catch::Contains("linear: x") && Catch::Contains("last dimension of 4"));
  Tensor W2 = randn({5, 3}, DType::f32, Device::cpu(), 22);
  Tensor b = randn({4}, DType::f32, Device::cpu(), 23);
  CHECK_THROWS_WITH(ops::linear(x, W2, b), Catch::Contains("linear: b") && Catch::Contains("[5]"));
  Tensor Wd = randn({5, 3}, DType::f64, Device::cpu(), 24);
  CHECK_THROWS_WITH(ops::linear(x, Wd, Tensor()), Catch::Contains("linear: W") && Catch::Contains("f32"));
}

TEST_CASE("linear CUDA matches CPU: forward and all gradients, accumulate", "[gpu][linear]") {
  UM_REQUIRE_GPU();
  PoisonArena poison(Device::cuda());
  struct Case {
    Shape x;
    int64_t out;
  };
  // out = 50: the GELU pre-activation cannot come from cuBLASLt's aux output (ld % 8 != 0), the fallback
  // epilogue kernel runs; out = 64 takes the fused epilogues; in = 33 gives odd leading dimensions.
  for (Case c : {Case{{37, 72}, 50}, Case{{3, 13, 72}, 50}, Case{{37, 40}, 64}, Case{{2, 2, 5, 33}, 64}}) {
    const int64_t in = c.x[-1];
    Shape ys = c.x;
    ys[-1] = c.out;
    for (DType dt : {DType::f32, DType::bf16}) {
      for (bool bias : {false, true}) {
        for (Activation act : {Activation::none, Activation::gelu}) {
          INFO("x " << c.x.str() << " out " << c.out << " " << dtype_name(dt) << " bias " << bias << " act "
                    << ops::activation_name(act));
          // The CPU reference sees the same (dt-rounded) values as the GPU.
          auto host = [dt](const Tensor& t) { return rounded(t, dt); };
          const Tensor x = host(randn(c.x, DType::f32, Device::cpu(), 30));
          const Tensor W = host(randn({c.out, in}, DType::f32, Device::cpu(), 31, 1.0 / std::sqrt(double(in))));
          const Tensor b = bias ? host(randn({c.out}, DType::f32, Device::cpu(), 32)) : Tensor();
          const std::vector<Tensor> dys{host(randn(ys, DType::f32, Device::cpu(), 33)),
                                        host(randn(ys, DType::f32, Device::cpu(), 34))};
          // Fresh leaves (no gradient yet) holding x, W, b on `dev` in dtype `t`.
          auto leaves = [&](DType t, Device dev) {
            std::vector<Tensor> v{convert(x, t, dev), convert(W, t, dev), bias ? convert(b, t, dev) : Tensor()};
            for (const Tensor& l : v)
              if (l.defined()) l.set_requires_grad(true);
            return v;
          };
          std::vector<Tensor> r1 = leaves(DType::f32, Device::cpu()), r2 = leaves(DType::f32, Device::cpu());
          LinearResult ref1 = run_linear(r1[0], r1[1], r1[2], act, {dys[0]});
          LinearResult ref2 = run_linear(r2[0], r2[1], r2[2], act, dys);

          std::vector<Tensor> g = leaves(dt, Device::cuda());
          // Parameters train with f32 master gradients behind the compute copies (NaN: must be overwritten).
          g[1].set_grad(nan_filled(W.shape(), DType::f32, Device::cuda()));
          if (bias) g[2].set_grad(nan_filled(b.shape(), DType::f32, Device::cuda()));
          const Tensor gdy0 = convert(dys[0], dt, Device::cuda()), gdy1 = convert(dys[1], dt, Device::cuda());
          const double tol = dt == DType::f32 ? kTolF32 : kTolBF16;
          LinearResult one = run_linear(g[0], g[1], g[2], act, {gdy0});
          CHECK(rel_error(one.y, ref1.y) < tol);
          CHECK(rel_error(one.dx, ref1.dx) < tol);
          CHECK(rel_error(one.dW, ref1.dW) < tol);
          if (bias) CHECK(rel_error(one.db, ref1.db) < tol);
          CHECK(grad_of(g[1]).dtype() == DType::f32);
          // The second pass accumulates into all three (dx in the activation dtype, dW and db in f32).
          LinearResult two = run_linear(g[0], g[1], g[2], act, {gdy1});
          CHECK(rel_error(two.y, ref2.y) < tol);
          CHECK(rel_error(two.dx, ref2.dx) < tol);
          CHECK(rel_error(two.dW, ref2.dW) < tol);
          if (bias) CHECK(rel_error(two.db, ref2.db) < tol);
          arena_for(Device::cpu()).reset();
        }
      }
    }
  }
}

TEST_CASE("linear CUDA: plan cache reuse and an LM-head-sized product", "[gpu][linear]") {
  UM_REQUIRE_GPU();
  PoisonArena poison(Device::cuda());
  // x [rows, 768] . wte [50304, 768]^T in bf16, no bias, as the GPT-2 LM head; backward with f32 dW.
  const int64_t rows = 1024, in = 768, vocab = 50304;
  Tensor x = randn({rows, in}, DType::f32, Device::cpu(), 40);
  Tensor W = randn({vocab, in}, DType::f32, Device::cpu(), 41, 0.05);
  Tensor dy = randn({rows, vocab}, DType::f32, Device::cpu(), 42, 1e-3);
  auto host = [](const Tensor& t) { return rounded(t, DType::bf16); };
  x = host(x), W = host(W), dy = host(dy);
  Tensor y_ref = Tensor::empty({rows, vocab}, DType::f32), dx_ref = Tensor::empty({rows, in}, DType::f32);
  Tensor dW_ref = Tensor::empty({vocab, in}, DType::f32);
  ops::linear_forward(x, W, Tensor(), Activation::none, y_ref, Tensor());
  ops::linear_backward(x, W, dy, Tensor(), Activation::none, GradSlot{dx_ref, false}, GradSlot{dW_ref, false},
                       GradSlot{});

  Tensor gx = convert(x, DType::bf16, Device::cuda()), gW = convert(W, DType::bf16, Device::cuda());
  Tensor gdy = convert(dy, DType::bf16, Device::cuda());
  Tensor y = Tensor::empty({rows, vocab}, DType::bf16, Device::cuda());
  Tensor dx = Tensor::empty({rows, in}, DType::bf16, Device::cuda());
  Tensor dW = Tensor::empty({vocab, in}, DType::f32, Device::cuda());
  for (int step = 0; step < 2; ++step) {
#if ULTRAMEM_CUDA
    const size_t plans_before = cuda::linear_plan_cache_size();
#endif
    ops::linear_forward(gx, gW, Tensor(), Activation::none, y, Tensor());
    ops::linear_backward(gx, gW, gdy, Tensor(), Activation::none, GradSlot{dx, false}, GradSlot{dW, false},
                         GradSlot{});
#if ULTRAMEM_CUDA
    // The first step creates the three plans (forward, dx, dW); the second finds them all cached.
    CHECK(cuda::linear_plan_cache_size() == plans_before + (step == 0 ? 3 : 0));
#endif
  }
  CHECK(rel_error(y, y_ref) < kTolBF16);
  CHECK(rel_error(dx, dx_ref) < kTolBF16);
  CHECK(rel_error(dW, dW_ref) < kTolBF16);
}
