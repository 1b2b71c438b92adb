#include <random>

#include "testing.h"
#include "ultramem/ops/embedding.h"

using namespace um;
using namespace um::testing;

namespace {

std::vector<double> plus(std::vector<double> a, const std::vector<double>& b) {
  for (size_t i = 0; i < a.size(); ++i) a[i] += b[i];
  return a;
}

// dtable = sum of dout rows by id, in position order, on top of `prior` (zeros when empty).
std::vector<double> naive_scatter_add(const std::vector<int64_t>& ids, const std::vector<double>& dout, int64_t vocab,
                                      int64_t C, std::vector<double> prior = {}) {
  if (prior.empty()) prior.assign(size_t(vocab * C), 0.0);
  for (size_t i = 0; i < ids.size(); ++i)
    for (int64_t c = 0; c < C; ++c) prior[size_t(ids[i] * C + c)] += dout[i * size_t(C) + size_t(c)];
  return prior;
}


// Ids with heavy repetition: mostly a few hot ids (one of them very hot), the rest spread over the vocabulary.
std::vector<int64_t> repeated_ids(int64_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int64_t> ids(static_cast<size_t>(n));
  for (auto& id : ids) {
    uint64_t u = rng() % 100;
    id = u < 30 ? int64_t(7 % vocab) : u < 60 ? int64_t(rng() % 13) % vocab : int64_t(rng() % uint64_t(vocab));
  }
  ids.back() = vocab - 1;
  return ids;
}

}  // namespace

TEST_CASE("embedding: rows of the table, in the table's dtype", "[ops][embedding]") {
  PoisonArena poison(Device::cpu());
  for (DType dt : {DType::f32, DType::f64}) {
    const int64_t V = 11, C = 5;
    Tensor table = randn({V, C}, dt, Device::cpu(), 1);
    std::vector<int64_t> v = {3, 0, 10, 3, 3, 7};
    Tensor ids = Tensor::from_ints(v, {2, 3}, DType::i32);
    Tensor out = ops::embedding(ids, table);
    REQUIRE(out.shape() == Shape({2, 3, C}));
    REQUIRE(out.dtype() == dt);
    std::vector<double> t = table.to_doubles(), o = out.to_doubles();
    for (size_t i = 0; i < v.size(); ++i)
      for (int64_t c = 0; c < C; ++c) CHECK(o[i * C + size_t(c)] == t[size_t(v[i] * C + c)]);
  }
}

TEST_CASE("embedding: an out-of-range id is an Error naming its position", "[ops][embedding]") {
  Tensor table = randn({11, 4}, DType::f32, Device::cpu(), 2);
  for (int64_t bad : {-1, 11, 1000}) {
    Tensor ids = Tensor::from_ints({1, 2, bad, 4}, {4}, DType::i32);
    INFO("bad id " << bad);
    CHECK_THROWS_WITH(ops::embedding(ids, table), Catch::Contains("ids position 2") && Catch::Contains("[0, 11)"));
    Tensor dtable = Tensor::empty({11, 4}, DType::f32);
    CHECK_THROWS_AS(ops::embedding_backward(ids, randn({4, 4}, DType::f32, Device::cpu(), 3), dtable, false), Error);
  }
  CHECK_THROWS_WITH(ops::embedding(Tensor::from_ints({1}, {1}, DType::i64), table), Catch::Contains("dtype i32"));
}

TEST_CASE("embedding: float64 gradient of the table with repeated ids", "[ops][embedding]") {
  Tensor table = randn({9, 6}, DType::f64, Device::cpu(), 4);
  table.set_requires_grad(true);
  Tensor ids = Tensor::from_ints({4, 1, 4, 4, 8, 1, 0, 4}, {2, 4}, DType::i32);
  CHECK(gradcheck([ids](const std::vector<Tensor>& in) { return ops::embedding(ids, in[0]); }, {table}) <
        kTolGradcheck);
}

TEST_CASE("embedding backward: rows sum in position order, accumulate keeps absent rows", "[ops][embedding]") {
  PoisonArena poison(Device::cpu());
  const int64_t V = 10, C = 3;
  std::vector<int64_t> v = {2, 5, 2, 9, 2};
  Tensor ids = Tensor::from_ints(v, {5}, DType::i32);
  Tensor dout = randn({5, C}, DType::f64, Device::cpu(), 5);
  Tensor dtable = alloc_activation({V, C}, DType::f64, Device::cpu());
  ops::embedding_backward(ids, dout, dtable, false);
  CHECK(dtable.to_doubles() == naive_scatter_add(v, dout.to_doubles(), V, C));  // zeros where absent
  Tensor prior = randn({V, C}, DType::f64, Device::cpu(), 6);
  dtable.copy_from(prior);
  ops::embedding_backward(ids, dout, dtable, true);
  CHECK(dtable.to_doubles() == naive_scatter_add(v, dout.to_doubles(), V, C, prior.to_doubles()));
}

// CUDA vs CPU: gather (exact), scatter-add backward, accumulate = true, and run-to-run bit identity.
static void compare_embedding_on_gpu(int64_t n, int64_t V, int64_t C, DType dt, bool check_accumulate) {
  const Device gpu = Device::cuda(), cpu = Device::cpu();
  const double tol = dt == DType::f32 ? kTolF32 : kTolBF16;
  const uint64_t seed = uint64_t(n + V + C);
  std::vector<int64_t> v = repeated_ids(n, V, seed);
  Tensor ids = Tensor::from_ints(v, {n}, DType::i32);
  Tensor table = rounded(randn({V, C}, DType::f32, cpu, seed + 1), dt);
  Tensor dout = rounded(randn({n, C}, DType::f32, cpu, seed + 2), dt);

  Tensor ref_out = ops::embedding(ids, table);
  Tensor ref_grad = Tensor::empty({V, C}, DType::f64);  // summed in double: a reference for long runs too
  ops::embedding_backward(ids, convert(dout, DType::f64, cpu), ref_grad, false);

  Tensor gids = ids.to(gpu), gtable = convert(table, dt, gpu), gdout = convert(dout, dt, gpu);
  Tensor out = ops::embedding(gids, gtable);
  Tensor grad = alloc_activation({V, C}, DType::f32, gpu);
  ops::embedding_backward(gids, gdout, grad, false);

  INFO("n=" << n << " V=" << V << " C=" << C << " dtype=" << dtype_name(dt));
  REQUIRE(out.dtype() == dt);
  CHECK(out.to_doubles() == ref_out.to_doubles());  // a gather is exact
  std::vector<double> first = grad.to_doubles();
  CHECK(rel_error(first, ref_grad.to_doubles()) < tol);
  ops::embedding_backward(gids, gdout, grad, false);
  CHECK(grad.to_doubles() == first);  // deterministic

  if (check_accumulate) {
    Tensor prior = randn({V, C}, DType::f32, cpu, seed + 3);
    grad.copy_from(prior.to(gpu));
    ops::embedding_backward(gids, gdout, grad, true);
    CHECK(rel_error(grad.to_doubles(), plus(prior.to_doubles(), ref_grad.to_doubles())) < tol);
  }
}

TEST_CASE("embedding CUDA matches CPU", "[gpu][embedding]") {
  UM_REQUIRE_GPU();
  PoisonArena poison(Device::cuda());
  for (DType dt : {DType::f32, DType::bf16}) {
    for (int64_t C : {7, 33, 768, 1000}) compare_embedding_on_gpu(37 * 29, 97, C, dt, true);
    compare_embedding_on_gpu(1, 5, 8, dt, true);
    compare_embedding_on_gpu(20000, 50304, 768, dt, false);  // GPT-2's padded vocabulary, 6000 copies of one id
    arena_for(Device::cuda()).reset();
  }
  compare_embedding_on_gpu(4099, 50304, 64, DType::f32, true);
  compare_embedding_on_gpu(40000, 2, 8, DType::f32, true);       // one id's run covers > 256 tiles
  compare_embedding_on_gpu(2200000, 1000, 4, DType::f32, false);  // items longer than one staging chunk
}

TEST_CASE("embedding autograd on CUDA matches CPU", "[gpu][embedding]") {
  UM_REQUIRE_GPU();
  PoisonArena poison(Device::cuda());
  Tensor ids = Tensor::from_ints(repeated_ids(3 * 41, 50, 7), {3, 41}, DType::i32);
  Tensor table = randn({50, 33}, DType::f32, Device::cpu(), 8);
  Tensor R = randn({3, 41, 33}, DType::f32, Device::cpu(), 9);
  Tensor gids = ids.to(Device::cuda());
  std::vector<Tensor> cpu_in = {table}, gpu_in = {table.to(Device::cuda())};
  cpu_in[0].set_requires_grad(true);
  gpu_in[0].set_requires_grad(true);
  auto ref = grads_of_projection([&](const std::vector<Tensor>& in) { return ops::embedding(ids, in[0]); }, cpu_in, R);
  auto out = grads_of_projection([&](const std::vector<Tensor>& in) { return ops::embedding(gids, in[0]); }, gpu_in, R);
  CHECK(rel_error(out[0], ref[0]) < kTolF32);
}

TEST_CASE("embedding CUDA: an out-of-range id is an Error, not an out-of-bounds access", "[gpu][embedding]") {
  UM_REQUIRE_GPU();
  const int64_t V = 50304, C = 64;
  Tensor table = randn({V, C}, DType::f32, Device::cuda(), 10);
  for (int64_t bad : {int64_t(-1), V, int64_t(1) << 30}) {
    std::vector<int64_t> v(300, 5);
    v[17] = bad;
    v[200] = bad;
    Tensor ids = Tensor::from_ints(v, {300}, DType::i32, Device::cuda());
    INFO("bad id " << bad);
    CHECK_THROWS_WITH(ops::embedding(ids, table), Catch::Contains("ids position 17") && Catch::Contains("[0, 50304)"));
    Tensor grad = Tensor::zeros({V, C}, DType::f32, Device::cuda());
    CHECK_THROWS_WITH(ops::embedding_backward(ids, randn({300, C}, DType::f32, Device::cuda(), 11), grad, true),
                      Catch::Contains("ids position 17"));
  }
  // The device is still healthy: a valid call works afterwards.
  Tensor ok = Tensor::from_ints({0, V - 1}, {2}, DType::i32, Device::cuda());
  CHECK(ops::embedding(ok, table).to_doubles().size() == size_t(2 * C));
  arena_for(Device::cuda()).reset();
}
