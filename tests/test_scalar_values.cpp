// scalar_values: one-element tensors of several dtypes read in one piece, against their own to_doubles,
// and its argument checks.
#include "testing.h"
#include "ultramem/core/arena.h"
#include "ultramem/core/device.h"
#include "ultramem/core/tensor.h"

using namespace um;

namespace {

std::vector<Tensor> mixed_scalars(Device dev) {
  return {Tensor::from_doubles({1.25}, Shape{1}, DType::f32, dev),
          Tensor::from_doubles({-3.5e-7}, Shape{1}, DType::f64, dev),
          Tensor::from_doubles({0.375}, Shape{1, 1}, DType::bf16, dev),
          Tensor::from_ints({-42}, Shape{1}, DType::i32, dev),
          Tensor::from_ints({int64_t(1) << 40}, Shape{1}, DType::i64, dev),
          Tensor::from_doubles({7.0, 8.0}, Shape{2}, DType::f32, dev).narrow0(1, 1)};
}

void require_matches_one_by_one(const std::vector<Tensor>& scalars) {
  const std::vector<double> got = scalar_values(scalars);
  REQUIRE(got.size() == scalars.size());
  for (size_t i = 0; i < scalars.size(); ++i) {
    INFO("scalar " << i << ": " << scalars[i].desc());
    CHECK(got[i] == scalars[i].to_doubles()[0]);
  }
}

}  // namespace

TEST_CASE("scalar_values reads one-element tensors of every dtype", "[core][tensor]") {
  const std::vector<Tensor> scalars = mixed_scalars(Device::cpu());
  require_matches_one_by_one(scalars);
  const std::vector<double> got = scalar_values(scalars);
  CHECK(got[0] == 1.25);
  CHECK(got[1] == -3.5e-7);
  CHECK(got[2] == 0.375);
  CHECK(got[3] == -42.0);
  CHECK(got[4] == double(int64_t(1) << 40));
  CHECK(got[5] == 8.0);
  CHECK(scalar_values({}).empty());
}

TEST_CASE("scalar_values names what it rejects", "[core][tensor]") {
  const Tensor one = Tensor::from_doubles({1.0}, Shape{1}, DType::f32);
  CHECK_THROWS_WITH(scalar_values({one, Tensor::zeros(Shape{2}, DType::f32)}),
                    Catch::Contains("tensor 1 with one element"));
  CHECK_THROWS_WITH(scalar_values({Tensor()}), Catch::Contains("tensor 0 with one element"));
}

TEST_CASE("scalar_values on the GPU matches reading one by one", "[gpu][tensor]") {
  UM_REQUIRE_GPU();
  const Device dev = Device::cuda();
  std::vector<Tensor> scalars = mixed_scalars(dev);
  // A value written by a kernel still in flight on the stream: the read must wait for it.
  Tensor big = Tensor::zeros(Shape{1 << 22}, DType::f32, dev);
  scalars.push_back(big.narrow0((1 << 22) - 1, 1));
  require_matches_one_by_one(scalars);
  CHECK(scalar_values(scalars).back() == 0.0);
  CHECK_THROWS_WITH(scalar_values({scalars[0], Tensor::from_doubles({1.0}, Shape{1}, DType::f32)}),
                    Catch::Contains("scalar_values"));
  arena_for(dev).reset();
}
