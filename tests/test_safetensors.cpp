#include <filesystem>
#include <fstream>
#include <unistd.h>

#include "testing.h"
#include "ultramem/io/safetensors.h"

using namespace um;
using namespace um::io;
namespace fs = std::filesystem;

static std::string tmpfile(const std::string& name) {
  return (fs::temp_directory_path() / ("ultramem-st-" + std::to_string(::getpid()) + "-" + name)).string();
}

TEST_CASE("safetensors round trip", "[io]") {
  std::string p = tmpfile("rt.safetensors");
  Tensor a = testing::randn({3, 4}, DType::f32, Device::cpu(), 1);
  Tensor b = testing::randn({5}, DType::bf16, Device::cpu(), 2);
  save_safetensors(p, {{"a.weight", a}, {"b", b}}, {{"format", "pt"}});
  SafetensorsReader r(p);
  CHECK(r.entries().size() == 2);
  CHECK(r.metadata().at("format") == "pt");
  Tensor a2 = Tensor::empty({3, 4}, DType::f32), b2 = Tensor::empty({5}, DType::bf16);
  r.read_into("a.weight", a2);
  r.read_into("b", b2);
  CHECK(a2.to_doubles() == a.to_doubles());
  CHECK(b2.to_doubles() == b.to_doubles());
  Tensor wrong = Tensor::empty({4, 3}, DType::f32);
  CHECK_THROWS_WITH(r.read_into("a.weight", wrong), Catch::Contains("a.weight") && Catch::Contains("[3,4]"));
  CHECK_THROWS_WITH(r.read_into("missing", a2), Catch::Contains("missing"));
}

static void write_raw(const std::string& p, const std::string& header, size_t data_bytes) {
  std::ofstream f(p, std::ios::binary);
  uint64_t n = header.size();
  f.write(reinterpret_cast<const char*>(&n), 8);
  f.write(header.data(), std::streamsize(header.size()));
  std::string data(data_bytes, '\1');
  f.write(data.data(), std::streamsize(data.size()));
}

TEST_CASE("hostile safetensors headers are clear errors", "[io]") {
  std::string p = tmpfile("bad.safetensors");
  struct Case {
    std::string header;
    size_t data;
    std::string needle;
  } cases[] = {
      {"{not json", 0, "JSON"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}})", 8, "byte range"},
      {R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8, "12 bytes"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
       16, "overlap"},
      {R"({"a":{"dtype":"Q7","shape":[2],"data_offsets":[0,8]}})", 8, "dtype"},
      {R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8, "dimensions"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8, "byte range"},
  };
  for (auto& c : cases) {
    write_raw(p, c.header, c.data);
    INFO(c.header);
    CHECK_THROWS_WITH(SafetensorsReader(p), Catch::Contains(c.needle));
  }
  // A header length larger than the file.
  {
    std::ofstream f(p, std::ios::binary);
    uint64_t n = 1ull << 50;
    f.write(reinterpret_cast<const char*>(&n), 8);
  }
  CHECK_THROWS_WITH(SafetensorsReader(p), Catch::Contains("header length"));
}
