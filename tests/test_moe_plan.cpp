// The MoE plan: the stable expert-contiguous order on the CPU, its two-step form and error paths on the
// GPU, and the GPU's counting sort against the CPU at scale ([gpu]).
#include <random>

#include "grouped_rows.h"
#include "testing.h"
#include "ultramem/core/arena.h"
#include "ultramem/ops/moe_dispatch.h"

using namespace um;
using namespace um::testing;

TEST_CASE("moe plan: stable expert-contiguous order, empty experts, capacity", "[moe][ops]") {
  // 5 tokens, top-2, 5 experts; experts 1 and 4 get nothing.
  const std::vector<int64_t> ids = {3, 0, 0, 2, 3, 2, 0, 3, 2, 0};
  ops::MoePlan p = ops::moe_plan(experts_tensor(ids, 5, 2), 5);
  CHECK(p.counts == std::vector<int64_t>{4, 0, 3, 3, 0});
  CHECK(p.groups.start == std::vector<int64_t>{0, 4, 4, 7, 10});
  CHECK(p.groups.size == p.counts);
  // Within an expert the assignments stay ascending.
  CHECK(p.sorted_assignment.to_ints() == std::vector<int64_t>{1, 2, 6, 9, 3, 5, 8, 0, 4, 7});
  std::vector<int64_t> row_of = p.row_of.to_ints(), sorted = p.sorted_assignment.to_ints();
  for (int64_t r = 0; r < 10; ++r) CHECK(row_of[size_t(sorted[size_t(r)])] == r);
  CHECK(p.dropped() == 0);
  // Capacity 2: each expert keeps its first two assignments.
  ops::MoePlan c = ops::moe_plan(experts_tensor(ids, 5, 2), 5, 2);
  CHECK(c.groups.size == std::vector<int64_t>{2, 0, 2, 2, 0});
  CHECK(c.dropped() == 4);
  CHECK(c.row_of.to_ints() == std::vector<int64_t>{7, 0, 1, 4, 8, 5, -1, -1, -1, -1});
  CHECK_THROWS_WITH(ops::moe_plan(experts_tensor({0, 5}, 1, 2), 5),
                    Catch::Contains("moe_plan: experts position 1") && Catch::Contains("[0, 5)"));
  arena_for(Device::cpu()).reset();
}

TEST_CASE("moe plan in two steps on the GPU: same plan, unfinished use refused, bad ids and abandoned plans named", "[gpu][moe]") {
  UM_REQUIRE_GPU();
  const Device dev = Device::cuda();
  const int64_t N = 300, k = 3, E = 11;
  std::vector<int64_t> ids(size_t(N * k));
  std::mt19937_64 rng(75);
  for (auto& id : ids) id = int64_t(rng() % uint64_t(E));
  const ops::MoePlan whole = ops::moe_plan(experts_tensor(ids, N, k, dev), E, 90);
  ops::MoePlan p = ops::moe_plan_start(experts_tensor(ids, N, k, dev), E, 90);
  CHECK(p.host_ticket != 0);
  const Tensor ys = Tensor::zeros({N * k, 8}, DType::f32, dev);
  CHECK_THROWS_WITH(p.dropped(), Catch::Contains("moe_plan_finish"));  // the group sizes are still in flight
  Tensor xs = ops::moe_permute(Tensor::zeros({N, 8}, DType::f32, dev), p);  // the device arrays are usable
  ops::moe_plan_finish(p);
  CHECK(p.host_ticket == 0);
  CHECK(p.counts == whole.counts);
  CHECK(p.groups.start == whole.groups.start);
  CHECK(p.groups.size == whole.groups.size);
  CHECK(p.row_of.to_ints() == whole.row_of.to_ints());
  CHECK(p.sorted_assignment.to_ints() == whole.sorted_assignment.to_ints());
  CHECK(ops::moe_combine(ys, p).shape() == Shape{N, 8});
  // A bad id is found on the device and named at finish.
  std::vector<int64_t> bad = ids;
  bad[7] = E + 3;
  ops::MoePlan b = ops::moe_plan_start(experts_tensor(bad, N, k, dev), E);
  CHECK_THROWS_WITH(ops::moe_plan_finish(b), Catch::Contains("experts position 7") && Catch::Contains(std::to_string(E + 3)));
  // One plan in flight per thread: a later start abandons the earlier one, whose finish then says so.
  ops::MoePlan first = ops::moe_plan_start(experts_tensor(ids, N, k, dev), E);
  ops::MoePlan second = ops::moe_plan_start(experts_tensor(ids, N, k, dev), E);
  CHECK_THROWS_WITH(ops::moe_plan_finish(first), Catch::Contains("abandoned"));
  ops::moe_plan_finish(second);
  CHECK(second.counts == ops::moe_plan(experts_tensor(ids, N, k, dev), E).counts);
  // Empty experts at both ends (ids 2 to E - 3): the offsets before the first id and after the last, as the CPU.
  std::vector<int64_t> middle(size_t(N * k));
  for (auto& id : middle) id = 2 + int64_t(rng() % uint64_t(E - 4));
  const ops::MoePlan on_gpu = ops::moe_plan(experts_tensor(middle, N, k, dev), E);
  const ops::MoePlan on_cpu = ops::moe_plan(experts_tensor(middle, N, k, Device::cpu()), E);
  CHECK(on_gpu.counts == on_cpu.counts);
  CHECK(on_gpu.groups.start == on_cpu.groups.start);
  CHECK(on_gpu.groups.size == on_cpu.groups.size);
  CHECK(on_gpu.row_of.to_ints() == on_cpu.row_of.to_ints());
  CHECK(on_gpu.sorted_assignment.to_ints() == on_cpu.sorted_assignment.to_ints());
  CHECK((on_gpu.counts[0] == 0 && on_gpu.counts[1] == 0 && on_gpu.counts[size_t(E - 1)] == 0));
  arena_for(dev).reset();
  arena_for(Device::cpu()).reset();
}

TEST_CASE("moe plan on the GPU equals the CPU's at scale: many chunks, 1024 experts, capacity, bad ids", "[gpu][moe]") {
  UM_REQUIRE_GPU();
  const Device dev = Device::cuda();
  struct Case {
    int64_t N, k, E, capacity;
  };
  // 625 chunks of 256 assignments (a partial last one at 1, 1000 and 1021 x 16), the router's 1024
  // experts, skewed loads (ids from a few experts) with a capacity.
  for (Case c : {Case{20000, 8, 64, 0}, Case{1021, 16, 1024, 0}, Case{4099, 2, 8, 700}, Case{1, 1, 3, 0}}) {
    INFO("N " << c.N << " k " << c.k << " E " << c.E << " capacity " << c.capacity);
    std::vector<int64_t> ids(size_t(c.N * c.k));
    std::mt19937_64 rng(88);
    for (auto& id : ids) id = int64_t(rng() % uint64_t(c.capacity > 0 ? 3 : c.E));  // with a capacity: 3 experts
    const ops::MoePlan g = ops::moe_plan(experts_tensor(ids, c.N, c.k, dev), c.E, c.capacity);
    const ops::MoePlan h = ops::moe_plan(experts_tensor(ids, c.N, c.k, Device::cpu()), c.E, c.capacity);
    CHECK(g.counts == h.counts);
    CHECK(g.groups.start == h.groups.start);
    CHECK(g.groups.size == h.groups.size);
    CHECK(g.sorted_assignment.to_ints() == h.sorted_assignment.to_ints());
    CHECK(g.row_of.to_ints() == h.row_of.to_ints());
    if (c.capacity > 0) CHECK(g.dropped() > 0);
    // The first bad position is named, wherever in the chunks the bad ids lie.
    std::vector<int64_t> bad = ids;
    const size_t first = bad.size() * 3 / 5;
    bad[first] = c.E;
    bad[bad.size() - 1] = -1;
    CHECK_THROWS_WITH(ops::moe_plan(experts_tensor(bad, c.N, c.k, dev), c.E),
                      Catch::Contains("experts position " + std::to_string(first) + ":"));
    arena_for(dev).reset();
    arena_for(Device::cpu()).reset();
  }
  CHECK_THROWS_WITH(ops::moe_plan(experts_tensor({0, 1}, 1, 2, dev), 1025), Catch::Contains("at most 1024 experts"));
}
