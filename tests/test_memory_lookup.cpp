#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>

#include "testing.h"
#include "ultramem/ops/memory_lookup.h"

using namespace um;
using namespace um::testing;

namespace {

// One lookup problem: sizes, arguments and which optional parts it has.
struct Case {
  int64_t T, M, N, V, P, C;  // P = 0: no pre-values
  int64_t value_num, offset, groups;
  bool perm, gelu;
  int64_t virtual_num() const { return groups * value_num; }
  ops::LookupArgs args() const {
    ops::LookupArgs a;
    a.value_num = value_num;
    a.offset = offset;
    a.virtual_num = groups > 1 ? virtual_num() : 0;
    a.groups = groups;
    a.gelu_gate = gelu;
    return a;
  }
  std::string str() const {
    return detail::concat("T=", T, " M=", M, " N=", N, " V=", V, " P=", P, " C=", C, " value_num=", value_num,
                          " offset=", offset, " groups=", groups, " perm=", perm, " gelu=", gelu);
  }
};

// Indices with heavy repetition (several slots of a token and many tokens hit the same rows): a third
// of the picks go to 5 hot indices, the rest anywhere; the last pick is the top index.
std::vector<int64_t> repeated_indices(int64_t n, int64_t range, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int64_t> v(static_cast<size_t>(n));
  for (auto& x : v) x = rng() % 3 == 0 ? int64_t(rng() % 5) % range : int64_t(rng() % uint64_t(range));
  v.back() = range - 1;
  return v;
}

std::vector<int64_t> permutation(int64_t n, uint64_t seed) {
  std::vector<int64_t> p(static_cast<size_t>(n));
  std::iota(p.begin(), p.end(), 0);
  std::shuffle(p.begin(), p.end(), std::mt19937_64(seed));
  return p;
}

Tensor as(const Tensor& t, DType dt, Device dev) {
  return t.defined() ? Tensor::from_doubles(t.to_doubles(), t.shape(), dt, dev) : Tensor();
}
// `t` rounded to dtype `dt`, held as f64 on the CPU.
Tensor rounded_f64(const Tensor& t, DType dt) { return as(as(t, dt, Device::cpu()), DType::f64, Device::cpu()); }

// The inputs of a case as f64 CPU tensors, float inputs rounded to `dt` (exactly representable there).
struct Inputs {
  Tensor indices, weights, values, perm, pre_in, pre_values;
};
Inputs make_inputs(const Case& c, DType dt, uint64_t seed) {
  const Device cpu = Device::cpu();
  Inputs in;
  in.indices = Tensor::from_ints(repeated_indices(c.T * c.M, c.virtual_num(), seed), {c.T, c.M}, DType::i32);
  if (c.perm) in.perm = Tensor::from_ints(permutation(c.virtual_num(), seed + 1), {c.virtual_num()}, DType::i32);
  in.weights = rounded_f64(randn({c.T, c.M, c.C}, DType::f64, cpu, seed + 2), DType::f32);  // f32 on every device
  in.values = rounded_f64(randn({c.N, c.V}, DType::f64, cpu, seed + 3), dt);
  if (c.P) {
    in.pre_in = rounded_f64(randn({c.T, c.P}, DType::f64, cpu, seed + 4), dt);
    in.pre_values = rounded_f64(randn({c.N, c.P}, DType::f64, cpu, seed + 5, 1.0 / std::sqrt(double(c.P))), dt);
  }
  return in;
}

double gelu(double x) {
  const double pi = 3.14159265358979323846;
  return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / pi) * (x + 0.044715 * x * x * x)));
}

// The header's formula, term by term.
std::vector<double> naive_lookup(const Case& c, const Inputs& in) {
  std::vector<int64_t> idx = in.indices.to_ints(), perm = c.perm ? in.perm.to_ints() : std::vector<int64_t>();
  std::vector<double> w = in.weights.to_doubles(), v = in.values.to_doubles(), out(size_t(c.T * c.groups * c.V));
  std::vector<double> x = c.P ? in.pre_in.to_doubles() : std::vector<double>();
  std::vector<double> pv = c.P ? in.pre_values.to_doubles() : std::vector<double>();
  const int64_t cpc = c.V / c.C;
  for (int64_t t = 0; t < c.T; ++t)
    for (int64_t s = 0; s < c.M; ++s) {
      const int64_t p = t * c.M + s, vi = c.perm ? perm[size_t(idx[size_t(p)])] : idx[size_t(p)];
      const int64_t row = (vi % c.value_num + c.offset) % c.N, g = c.groups == 1 ? 0 : vi / c.value_num;
      double gate = 1.0;
      if (c.P) {
        double d = 0;
        for (int64_t k = 0; k < c.P; ++k) d += x[size_t(t * c.P + k)] * pv[size_t(row * c.P + k)];
        gate = c.gelu ? gelu(d) : d;
      }
      for (int64_t col = 0; col < c.V; ++col)
        out[size_t((t * c.groups + g) * c.V + col)] +=
            gate * w[size_t(p * c.C + col / cpc)] * v[size_t(row * c.V + col)];
    }
  return out;
}

Tensor lookup(const Inputs& in, const Case& c) {
  return ops::memory_lookup(in.indices, in.weights, in.values, in.perm, in.pre_in, in.pre_values, c.args());
}

std::vector<double> plus(std::vector<double> a, const std::vector<double>& b) {
  for (size_t i = 0; i < a.size(); ++i) a[i] += b[i];
  return a;
}

const Case kCases[] = {
    // T  M  N   V  P  C  value_num offset groups perm  gelu
    {5, 6, 23, 12, 0, 1, 23, 0, 1, false, false},   // a plain weighted bag
    {5, 6, 23, 12, 7, 2, 10, 19, 1, false, true},   // offset wrapping the pool, chunks, GELU gate
    {4, 7, 23, 12, 7, 3, 10, 4, 3, true, false},    // implicit value expansion (groups) + perm, linear gate
    {3, 9, 11, 8, 5, 2, 6, 9, 2, true, true},       // value_num < N and offset past the end
};

}  // namespace

TEST_CASE("memory_lookup: values against the naive formula", "[memory]") {
  PoisonArena poison(Device::cpu());
  for (const Case& c : kCases) {
    for (DType dt : {DType::f32, DType::f64}) {
      INFO(c.str() << " dtype=" << dtype_name(dt));
      Inputs in = make_inputs(c, DType::f32, 1);
      Inputs typed = in;
      typed.values = as(in.values, dt, Device::cpu());
      typed.weights = as(in.weights, dt, Device::cpu());
      typed.pre_in = as(in.pre_in, dt, Device::cpu());
      typed.pre_values = as(in.pre_values, dt, Device::cpu());
      Tensor out = lookup(typed, c);
      REQUIRE(out.shape() == Shape({c.T, c.groups * c.V}));
      REQUIRE(out.dtype() == dt);
      CHECK(rel_error(out.to_doubles(), naive_lookup(c, in)) < (dt == DType::f64 ? 1e-14 : 1e-6));
    }
  }
}

TEST_CASE("memory_lookup: used marks exactly the rows read", "[memory]") {
  const Case& c = kCases[2];
  Inputs in = make_inputs(c, DType::f32, 2);
  std::vector<int64_t> idx = in.indices.to_ints(), perm = in.perm.to_ints();
  std::vector<int64_t> expect(size_t(c.N), 7);  // untouched entries keep their value
  for (int64_t i : idx) expect[size_t((perm[size_t(i)] % c.value_num + c.offset) % c.N)] = 1;
  Tensor used = Tensor::from_ints(std::vector<int64_t>(size_t(c.N), 7), {c.N}, DType::i32);
  Tensor out = Tensor::empty({c.T, c.groups * c.V}, DType::f64);
  ops::memory_lookup_forward(in.indices, in.weights, in.values, in.perm, in.pre_in, in.pre_values, c.args(), out,
                             used);
  CHECK(used.to_ints() == expect);
}

TEST_CASE("memory_lookup: bad indices and arguments are Errors naming what is wrong", "[memory]") {
  const Case& c = kCases[2];  // virtual_num = 30
  Inputs in = make_inputs(c, DType::f32, 3);
  for (int64_t bad : {int64_t(-1), int64_t(30), int64_t(1) << 30}) {
    INFO("bad index " << bad);
    std::vector<int64_t> idx = in.indices.to_ints();
    idx[9] = bad;
    idx[20] = bad;
    Inputs b = in;
    b.indices = Tensor::from_ints(idx, {c.T, c.M}, DType::i32);
    CHECK_THROWS_WITH(lookup(b, c), Catch::Contains("memory_lookup: indices position 9") && Catch::Contains("[0, 30)"));
    Tensor dv = Tensor::zeros(b.values.shape(), DType::f64);
    CHECK_THROWS_WITH(ops::memory_lookup_backward(b.indices, b.weights, b.values, b.perm, b.pre_in, b.pre_values,
                                                  c.args(), Tensor::zeros({c.T, c.groups * c.V}, DType::f64),
                                                  Tensor(), false, dv, false, Tensor(), false, Tensor(), false),
                      Catch::Contains("indices position 9"));
  }
  {
    std::vector<int64_t> perm = in.perm.to_ints(), idx = in.indices.to_ints();
    perm[size_t(idx[4])] = 30;  // the perm entry that position 4 reads (the earliest reader of it fails)
    Inputs b = in;
    b.perm = Tensor::from_ints(perm, {30}, DType::i32);
    CHECK_THROWS_WITH(lookup(b, c), Catch::Contains(detail::concat("perm position ", idx[4])) &&
                                        Catch::Contains("a virtual index in [0, 30)"));
  }
  Inputs b = in;
  b.weights = randn({c.T, c.M, 5}, DType::f64, Device::cpu(), 4);
  CHECK_THROWS_WITH(lookup(b, c), Catch::Contains("multiple of the C chunks"));
  b = in;
  b.pre_values = Tensor();
  CHECK_THROWS_WITH(lookup(b, c), Catch::Contains("pre_in and pre_values"));
  b = in;
  b.weights = as(in.weights, DType::bf16, Device::cpu());
  CHECK_THROWS_WITH(lookup(b, c), Catch::Contains("memory_lookup: weights"));
  ops::LookupArgs a = c.args();
  a.value_num = 5;  // 3 groups x 5 < virtual_num 30
  CHECK_THROWS_WITH(ops::memory_lookup(in.indices, in.weights, in.values, in.perm, in.pre_in, in.pre_values, a),
                    Catch::Contains("groups * value_num"));
}

TEST_CASE("memory_lookup: float64 gradients of weights, values, pre_in and pre_values", "[memory]") {
  const Case small[] = {
      {3, 4, 9, 4, 3, 2, 9, 0, 1, false, true},  // GELU gate, 2 chunks
      {3, 5, 7, 6, 4, 3, 4, 5, 2, true, false},  // linear gate, groups, perm, wrap
      {4, 3, 5, 4, 0, 1, 5, 2, 1, false, false}, // no pre-values
  };
  for (const Case& c : small) {
    INFO(c.str());
    Inputs in = make_inputs(c, DType::f64, 5);
    std::vector<Tensor> x = {in.weights, in.values};
    if (c.P) {
      x.push_back(in.pre_in);
      x.push_back(in.pre_values);
    }
    for (auto& t : x) t.set_requires_grad(true);
    auto f = [&](const std::vector<Tensor>& v) {
      return ops::memory_lookup(in.indices, v[0], v[1], in.perm, c.P ? v[2] : Tensor(), c.P ? v[3] : Tensor(),
                                c.args());
    };
    CHECK(gradcheck(f, x) < kTolGradcheck);
  }
}

TEST_CASE("memory_lookup backward: accumulate adds, rows no slot reads are zeroed or kept", "[memory]") {
  PoisonArena poison(Device::cpu());
  const Case& c = kCases[1];
  Inputs in = make_inputs(c, DType::f64, 6);
  Tensor dout = randn({c.T, c.groups * c.V}, DType::f64, Device::cpu(), 7);
  auto grads = [&](bool acc, const std::vector<Tensor>& prior) {
    std::vector<Tensor> g = {alloc_activation(in.weights.shape(), DType::f64, Device::cpu()),
                             alloc_activation(in.values.shape(), DType::f64, Device::cpu()),
                             alloc_activation(in.pre_in.shape(), DType::f64, Device::cpu()),
                             alloc_activation(in.pre_values.shape(), DType::f64, Device::cpu())};
    for (size_t i = 0; i < prior.size(); ++i) g[i].copy_from(prior[i]);
    ops::memory_lookup_backward(in.indices, in.weights, in.values, in.perm, in.pre_in, in.pre_values, c.args(), dout,
                                g[0], acc, g[1], acc, g[2], acc, g[3], acc);
    return g;
  };
  std::vector<Tensor> fresh = grads(false, {});
  std::vector<Tensor> prior;
  for (int i = 0; i < 4; ++i) prior.push_back(randn(fresh[size_t(i)].shape(), DType::f64, Device::cpu(), 8 + i));
  std::vector<Tensor> acc = grads(true, prior);
  for (size_t i = 0; i < 4; ++i) {
    INFO("gradient " << i);
    CHECK(rel_error(acc[i].to_doubles(), plus(prior[i].to_doubles(), fresh[i].to_doubles())) < 1e-14);
  }
  // Rows no slot reads: zero in the fresh table gradients.
  std::vector<int64_t> idx = in.indices.to_ints();
  std::vector<bool> read(size_t(c.N), false);
  for (int64_t i : idx) read[size_t((i % c.value_num + c.offset) % c.N)] = true;
  REQUIRE(std::count(read.begin(), read.end(), false) > 0);
  std::vector<double> dv = fresh[1].to_doubles(), dpv = fresh[3].to_doubles();
  for (int64_t r = 0; r < c.N; ++r)
    if (!read[size_t(r)]) {
      for (int64_t k = 0; k < c.V; ++k) CHECK(dv[size_t(r * c.V + k)] == 0.0);
      for (int64_t k = 0; k < c.P; ++k) CHECK(dpv[size_t(r * c.P + k)] == 0.0);
    }
}

TEST_CASE("softmax_lastdim: values, float64 gradient, accumulate", "[memory]") {
  PoisonArena poison(Device::cpu());
  Tensor x = randn({3, 2, 7}, DType::f64, Device::cpu(), 40, 3.0);
  std::vector<double> xs = x.to_doubles(), ref(xs.size());
  for (size_t r = 0; r < 6; ++r) {
    double m = *std::max_element(xs.begin() + long(r * 7), xs.begin() + long(r * 7 + 7)), s = 0;
    for (size_t k = 0; k < 7; ++k) s += std::exp(xs[r * 7 + k] - m);
    for (size_t k = 0; k < 7; ++k) ref[r * 7 + k] = std::exp(xs[r * 7 + k] - m) / s;
  }
  for (DType dt : {DType::f32, DType::f64}) {
    Tensor y = ops::softmax_lastdim(as(x, dt, Device::cpu()));
    CHECK(rel_error(y.to_doubles(), ref) < (dt == DType::f64 ? 1e-14 : 1e-6));
  }
  x.set_requires_grad(true);
  CHECK(gradcheck([](const std::vector<Tensor>& in) { return ops::softmax_lastdim(in[0]); }, {x}) < kTolGradcheck);
  Tensor y = Tensor::from_doubles(ref, x.shape(), DType::f64), dy = randn(x.shape(), DType::f64, Device::cpu(), 41);
  Tensor fresh = alloc_activation(x.shape(), DType::f64, Device::cpu()), acc = randn(x.shape(), DType::f64,
                                                                                      Device::cpu(), 42);
  std::vector<double> prior = acc.to_doubles();
  ops::softmax_lastdim_backward(y, dy, fresh, false);
  ops::softmax_lastdim_backward(y, dy, acc, true);
  CHECK(rel_error(acc.to_doubles(), plus(prior, fresh.to_doubles())) < 1e-14);
  CHECK_THROWS_WITH(ops::softmax_lastdim(Tensor::zeros({3}, DType::i32)), Catch::Contains("softmax_lastdim: x"));
}

// ---- CUDA vs CPU ----

// The GPU forward and backward (f32 or bf16) against the f64 CPU reference on dt-rounded inputs;
// accumulate = true on top of random priors; the backward run twice gives identical bytes.
static void compare_lookup_on_gpu(const Case& c, DType dt, uint64_t seed) {
  const Device gpu = Device::cuda(), cpu = Device::cpu();
  const double tol = dt == DType::f32 ? kTolF32 : kTolBF16;
  INFO(c.str() << " dtype=" << dtype_name(dt));
  Inputs in = make_inputs(c, dt, seed);
  const ops::LookupArgs args = c.args();
  Tensor dout = rounded_f64(randn({c.T, c.groups * c.V}, DType::f64, cpu, seed + 9), dt);

  Tensor used_ref = Tensor::zeros({c.N}, DType::i32);
  Tensor out_ref = Tensor::empty({c.T, c.groups * c.V}, DType::f64);
  ops::memory_lookup_forward(in.indices, in.weights, in.values, in.perm, in.pre_in, in.pre_values, args, out_ref,
                             used_ref);
  std::vector<Tensor> ref = {Tensor::empty(in.weights.shape(), DType::f64),
                             Tensor::empty(in.values.shape(), DType::f64),
                             c.P ? Tensor::empty(in.pre_in.shape(), DType::f64) : Tensor(),
                             c.P ? Tensor::empty(in.pre_values.shape(), DType::f64) : Tensor()};
  ops::memory_lookup_backward(in.indices, in.weights, in.values, in.perm, in.pre_in, in.pre_values, args, dout, ref[0],
                              false, ref[1], false, ref[2], false, ref[3], false);

  Tensor gidx = in.indices.to(gpu), gperm = c.perm ? in.perm.to(gpu) : Tensor();
  Tensor gw = as(in.weights, DType::f32, gpu), gv = as(in.values, dt, gpu), gdout = as(dout, dt, gpu);
  Tensor gx = as(in.pre_in, dt, gpu), gpv = as(in.pre_values, dt, gpu);
  Tensor used = Tensor::zeros({c.N}, DType::i32, gpu);
  Tensor out = alloc_activation({c.T, c.groups * c.V}, dt, gpu);
  ops::memory_lookup_forward(gidx, gw, gv, gperm, gx, gpv, args, out, used);
  CHECK(rel_error(out.to_doubles(), out_ref.to_doubles()) < tol);
  CHECK(used.to_ints() == used_ref.to_ints());

  // Weight and table gradients are f32 on the GPU; dpre_in has the activation dtype.
  auto backward = [&](bool acc, const std::vector<Tensor>& prior) {
    std::vector<Tensor> g = {alloc_activation(in.weights.shape(), DType::f32, gpu),
                             alloc_activation(in.values.shape(), DType::f32, gpu),
                             c.P ? alloc_activation(in.pre_in.shape(), dt, gpu) : Tensor(),
                             c.P ? alloc_activation(in.pre_values.shape(), DType::f32, gpu) : Tensor()};
    for (size_t i = 0; i < prior.size(); ++i)
      if (g[i]) g[i].copy_from(as(prior[i], g[i].dtype(), gpu));
    ops::memory_lookup_backward(gidx, gw, gv, gperm, gx, gpv, args, gdout, g[0], acc, g[1], acc, g[2], acc, g[3], acc);
    std::vector<std::vector<double>> h;
    for (auto& t : g) h.push_back(t ? t.to_doubles() : std::vector<double>());
    return h;
  };
  const char* names[] = {"dweights", "dvalues", "dpre_in", "dpre_values"};
  std::vector<std::vector<double>> first = backward(false, {});
  for (size_t i = 0; i < 4; ++i)
    if (ref[i]) {
      INFO(names[i]);
      CHECK(rel_error(first[i], ref[i].to_doubles()) < tol);
    }
  CHECK(backward(false, {}) == first);  // deterministic, bit for bit
  std::vector<Tensor> prior;
  for (size_t i = 0; i < 4; ++i)
    prior.push_back(ref[i] ? rounded_f64(randn(ref[i].shape(), DType::f64, cpu, seed + 20 + i), i == 2 ? dt : DType::f32)
                           : Tensor());
  std::vector<std::vector<double>> acc = backward(true, prior);
  for (size_t i = 0; i < 4; ++i)
    if (ref[i]) {
      INFO(names[i] << " accumulated");
      CHECK(rel_error(acc[i], plus(prior[i].to_doubles(), ref[i].to_doubles())) < tol);
    }
  arena_for(gpu).reset();
}

TEST_CASE("memory_lookup CUDA matches CPU", "[gpu][memory]") {
  UM_REQUIRE_GPU();
  PoisonArena poison(Device::cuda());
  const Case cases[] = {
      // T    M   N     V    P    C  value_num offset groups perm  gelu
      {37, 7, 50, 12, 20, 2, 50, 0, 1, false, true},        // scalar paths (V=12, P=20), 2 chunks
      {33, 32, 300, 192, 192, 1, 250, 170, 1, false, true},  // the release layer's widths, wrapping offset
      {31, 5, 97, 192, 20, 2, 40, 60, 2, true, false},        // groups + perm, vector V, scalar P
      {29, 11, 64, 192, 0, 1, 64, 0, 1, false, false},        // no pre-values
      {17, 6, 40, 48, 16, 4, 10, 35, 4, true, true},          // UltraMem v1-like: E = 4 groups, 4 chunks
      {4099, 32, 97, 192, 192, 1, 97, 0, 1, false, true},     // long runs: items cut by tiles, carries
  };
  uint64_t seed = 100;
  for (DType dt : {DType::f32, DType::bf16})
    for (const Case& c : cases) compare_lookup_on_gpu(c, dt, seed++);
}

TEST_CASE("memory_lookup autograd on CUDA matches CPU", "[gpu][memory]") {
  UM_REQUIRE_GPU();
  PoisonArena poison(Device::cuda());
  const Case c = {19, 8, 41, 24, 16, 2, 20, 30, 2, true, true};
  Inputs in = make_inputs(c, DType::f32, 60);
  Tensor R = randn({c.T, c.groups * c.V}, DType::f32, Device::cpu(), 61);
  auto run = [&](Device d) {
    std::vector<Tensor> x = {as(in.weights, DType::f32, d), as(in.values, DType::f32, d), as(in.pre_in, DType::f32, d),
                             as(in.pre_values, DType::f32, d)};
    for (auto& t : x) t.set_requires_grad(true);
    Tensor idx = in.indices.to(d), perm = in.perm.to(d);
    return grads_of_projection(
        [&](const std::vector<Tensor>& v) { return ops::memory_lookup(idx, v[0], v[1], perm, v[2], v[3], c.args()); },
        x, R);
  };
  std::vector<Tensor> ref = run(Device::cpu()), out = run(Device::cuda());
  for (size_t i = 0; i < 4; ++i) {
    INFO("input " << i);
    CHECK(rel_error(out[i], ref[i]) < kTolF32);
  }
  arena_for(Device::cuda()).reset();
}

TEST_CASE("memory_lookup CUDA: a bad index is an Error, not an out-of-bounds access", "[gpu][memory]") {
  UM_REQUIRE_GPU();
  const Case c = {40, 8, 5000, 192, 192, 1, 1000, 4500, 4, true, true};  // virtual_num 4000
  Inputs in = make_inputs(c, DType::bf16, 70);
  const Device gpu = Device::cuda();
  Tensor gw = as(in.weights, DType::f32, gpu), gv = as(in.values, DType::bf16, gpu), gperm = in.perm.to(gpu);
  Tensor gx = as(in.pre_in, DType::bf16, gpu), gpv = as(in.pre_values, DType::bf16, gpu);
  for (int64_t bad : {int64_t(-1), int64_t(4000), int64_t(1) << 30}) {
    INFO("bad index " << bad);
    std::vector<int64_t> idx = in.indices.to_ints();
    idx[17] = bad;
    idx[200] = bad;
    Tensor gidx = Tensor::from_ints(idx, {c.T, c.M}, DType::i32, gpu);
    CHECK_THROWS_WITH(ops::memory_lookup(gidx, gw, gv, gperm, gx, gpv, c.args()),
                      Catch::Contains("indices position 17") && Catch::Contains("[0, 4000)"));
    Tensor dv = Tensor::zeros(in.values.shape(), DType::f32, gpu);
    Tensor dpv = Tensor::zeros(in.pre_values.shape(), DType::f32, gpu);
    CHECK_THROWS_WITH(ops::memory_lookup_backward(gidx, gw, gv, gperm, gx, gpv, c.args(),
                                                  Tensor::zeros({c.T, c.groups * c.V}, DType::bf16, gpu), Tensor(),
                                                  false, dv, true, Tensor(), false, dpv, false),
                      Catch::Contains("indices position 17"));
  }
  std::vector<int64_t> perm = in.perm.to_ints(), idx = in.indices.to_ints();
  perm[size_t(idx[3])] = -5;
  CHECK_THROWS_WITH(ops::memory_lookup(in.indices.to(gpu), gw, gv, Tensor::from_ints(perm, {4000}, DType::i32, gpu),
                                       gx, gpv, c.args()),
                    Catch::Contains(detail::concat("perm position ", idx[3])));
  // The device is still healthy: a valid call works afterwards.
  CHECK(ops::memory_lookup(in.indices.to(gpu), gw, gv, gperm, gx, gpv, c.args()).to_doubles().size() ==
        size_t(c.T * c.groups * c.V));
  arena_for(gpu).reset();
}

TEST_CASE("softmax_lastdim CUDA matches CPU", "[gpu][memory]") {
  UM_REQUIRE_GPU();
  PoisonArena poison(Device::cuda());
  for (int64_t L : {1, 7, 32, 33, 100, 1000}) {
    INFO("L=" << L);
    const Shape s{37, L};
    Tensor x = randn(s, DType::f32, Device::cpu(), uint64_t(L), 4.0), dy = randn(s, DType::f32, Device::cpu(), 2);
    Tensor prior = randn(s, DType::f32, Device::cpu(), 3);
    Tensor y = ops::softmax_lastdim(x), dx = Tensor::empty(s, DType::f32);
    ops::softmax_lastdim_backward(y, dy, dx, false);
    Tensor gy = ops::softmax_lastdim(x.to(Device::cuda()));
    Tensor gdx = alloc_activation(s, DType::f32, Device::cuda());
    Tensor gacc = alloc_activation(s, DType::f32, Device::cuda());
    gacc.copy_from(prior.to(Device::cuda()));
    ops::softmax_lastdim_backward(gy, dy.to(Device::cuda()), gdx, false);
    ops::softmax_lastdim_backward(gy, dy.to(Device::cuda()), gacc, true);
    CHECK(rel_error(gy, y) < kTolF32);
    CHECK(rel_error(gdx, dx) < kTolF32);
    CHECK(rel_error(gacc.to_doubles(), plus(prior.to_doubles(), dx.to_doubles())) < kTolF32);
  }
  arena_for(Device::cuda()).reset();
}
