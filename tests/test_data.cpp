#include <filesystem>
#include <fstream>
#include <set>
#include <unistd.h>

#include "testing.h"
#include "ultramem/data/loader.h"

using namespace um;
using namespace um::data;
namespace fs = std::filesystem;

static std::string tmp_dir(const std::string& name) {
  fs::path p = fs::temp_directory_path() / ("ultramem-test-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

static std::vector<uint32_t> counting_tokens(size_t n, uint32_t vocab) {
  std::vector<uint32_t> t(n);
  for (size_t i = 0; i < n; ++i) t[i] = uint32_t((i * 7 + 3) % vocab);
  return t;
}

TEST_CASE("shard write/read round trip, u16 and u32", "[data]") {
  std::string dir = tmp_dir("shard");
  for (uint32_t vocab : {1000u, 100000u}) {
    auto toks = counting_tokens(5001, vocab);
    std::string path = dir + "/s" + std::to_string(vocab) + ".bin";
    write_shard(path, toks, vocab, 0, 3);
    CHECK_FALSE(fs::exists(path + ".tmp"));
    Shard s(path, true);
    CHECK(s.header().token_bytes == (vocab <= 65536 ? 2u : 4u));
    CHECK(s.size() == toks.size());
    CHECK(s.header().document_count == 3);
    std::vector<int32_t> out(100);
    s.read(4000, 100, out.data());
    for (size_t i = 0; i < 100; ++i) CHECK(out[i] == int32_t(toks[4000 + i]));
  }
}

TEST_CASE("corrupt shards are errors naming the file", "[data]") {
  std::string dir = tmp_dir("corrupt");
  std::string path = dir + "/a.bin";
  write_shard(path, counting_tokens(4096, 500), 500, 1, 1);
  auto bytes = [&] {
    std::ifstream in(path, std::ios::binary);
    return std::vector<char>((std::istreambuf_iterator<char>(in)), {});
  }();
  auto write_variant = [&](const std::string& name, std::vector<char> b) {
    std::string p = dir + "/" + name;
    std::ofstream(p, std::ios::binary).write(b.data(), std::streamsize(b.size()));
    return p;
  };
  auto expect_error = [](const std::string& p, const std::string& needle) {
    try {
      Shard s(p, true);
      FAIL("no error for " << p);
    } catch (const Error& e) {
      std::string msg = e.what();
      INFO(msg);
      CHECK(msg.find(p) != std::string::npos);
      CHECK(msg.find(needle) != std::string::npos);
    }
  };
  std::vector<char> truncated(bytes.begin(), bytes.end() - 10);
  expect_error(write_variant("truncated.bin", truncated), "truncated");
  std::vector<char> magic = bytes;
  magic[0] = 'X';
  expect_error(write_variant("magic.bin", magic), "magic");
  std::vector<char> flipped = bytes;
  flipped[2000] ^= 0x5a;
  expect_error(write_variant("flipped.bin", flipped), "checksum");
  std::vector<char> tiny(bytes.begin(), bytes.begin() + 100);
  expect_error(write_variant("tiny.bin", tiny), "header");
  expect_error(dir + "/missing.bin", "readable");
}

TEST_CASE("loader: windows, determinism, disjoint ranks, exact resume", "[data]") {
  std::string dir = tmp_dir("loader");
  std::vector<uint32_t> a(1000), b(777);
  for (size_t i = 0; i < a.size(); ++i) a[i] = uint32_t(i);
  for (size_t i = 0; i < b.size(); ++i) b[i] = uint32_t(10000 + i);
  write_shard(dir + "/a.bin", a, 20000, 0, 1);
  write_shard(dir + "/b.bin", b, 20000, 0, 1);
  auto files = expand_patterns(dir + "/*.bin", "data.train");
  REQUIRE(files.size() == 2);
  LoaderOptions opt;
  opt.seq_len = 16;
  opt.seed = 7;
  TokenLoader l1(files, opt), l2(files, opt);
  CHECK(l1.windows_per_epoch() == 999 / 16 + 776 / 16);
  std::vector<int32_t> ids(4 * 16), tg(4 * 16), ids2(4 * 16), tg2(4 * 16);
  l1.next_batch(4, ids.data(), tg.data());
  l2.next_batch(4, ids2.data(), tg2.data());
  CHECK(ids == ids2);
  for (int r = 0; r < 4; ++r)
    for (int t = 0; t + 1 < 16; ++t) CHECK(tg[r * 16 + t] == ids[r * 16 + t + 1]);  // targets are the next tokens
  for (int r = 0; r < 4; ++r) CHECK(tg[r * 16 + 15] == ids[r * 16 + 15] + 1);      // contiguous streams

  // Resume: a loader restored to l1's state continues exactly as l1 does, across an epoch boundary.
  TokenLoader l3(files, opt);
  l3.set_state(l1.state());
  for (int k = 0; k < 40; ++k) {
    l1.next_batch(3, ids.data(), tg.data());
    l3.next_batch(3, ids2.data(), tg2.data());
    REQUIRE(ids == ids2);
  }
  CHECK(l1.state().epoch >= 1);

  // Two ranks see disjoint windows covering an epoch.
  LoaderOptions r0 = opt, r1 = opt;
  r0.world = r1.world = 2;
  r1.rank = 1;
  TokenLoader a0(files, r0), a1(files, r1);
  std::set<int32_t> firsts;
  size_t n = a0.windows_per_epoch();
  for (size_t i = 0; i < n; ++i) {
    int32_t x[16], y[16];
    a0.next_batch(1, x, y);
    CHECK(firsts.insert(x[0]).second);
    a1.next_batch(1, x, y);
    CHECK(firsts.insert(x[0]).second);
  }
  // Bad state (from another data set) is an error.
  CHECK_THROWS_AS(l3.set_state({0, 1u << 30}), Error);
}

TEST_CASE("glob patterns that match nothing name the key", "[data]") {
  try {
    expand_patterns("/nonexistent/*.bin", "data.train");
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("data.train") != std::string::npos);
  }
}
