#include <filesystem>
#include <cstring>
#include <fstream>
#include <set>
#include <unistd.h>

#include "testing.h"
#include "ultramem/data/loader.h"
#include "ultramem/data/prefetcher.h"
#include "ultramem/data/raw_tokens.h"
#include "ultramem/train/trainer.h"

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

// Raw bytes of a file, for building malformed variants.
static std::vector<char> file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<char>((std::istreambuf_iterator<char>(in)), {});
}

static std::string write_bytes(const std::string& path, const std::vector<char>& b) {
  std::ofstream(path, std::ios::binary).write(b.data(), std::streamsize(b.size()));
  return path;
}

TEST_CASE("raw token arrays: .npy (u2, u4) and .u16/.u32 memmaps read like shards", "[data]") {
  std::string dir = tmp_dir("raw");
  RawTokenOptions raw{50280, 50279};
  auto toks = counting_tokens(3001, 50280);
  write_npy_tokens(dir + "/a.npy", toks, 2);
  write_npy_tokens(dir + "/b.npy", toks, 4);
  std::vector<char> u16(toks.size() * 2), u32(toks.size() * 4);
  for (size_t i = 0; i < toks.size(); ++i) {
    uint16_t v = uint16_t(toks[i]);
    std::memcpy(&u16[2 * i], &v, 2);
    std::memcpy(&u32[4 * i], &toks[i], 4);
  }
  write_bytes(dir + "/c.u16", u16);
  write_bytes(dir + "/d.u32", u32);
  // numpy's own header layout: 64-byte aligned data (format version 1).
  const auto v1 = file_bytes(dir + "/a.npy");
  CHECK(v1.size() == 128 + toks.size() * 2);
  // Format version 2: a 4-byte header length (numpy writes it for headers over 64 KiB).
  std::vector<char> v2 = {'\x93', 'N', 'U', 'M', 'P', 'Y', 2, 0, 118, 0, 0, 0};
  v2.insert(v2.end(), v1.begin() + 10, v1.end());
  write_bytes(dir + "/v2.npy", v2);
  for (const char* name : {"a.npy", "b.npy", "v2.npy", "c.u16", "d.u32"}) {
    INFO(name);
    auto src = open_token_source(dir + "/" + name, true, raw);
    CHECK(src->size() == toks.size());
    CHECK(src->vocab_size() == 50280u);
    CHECK(src->eos_id() == 50279u);
    std::vector<int32_t> out(200);
    src->read(2801, 200, out.data());
    for (size_t i = 0; i < 200; ++i) REQUIRE(out[i] == int32_t(toks[2801 + i]));
  }
  // A loader over a mix of formats sees the same windows as over .bin shards of the same tokens.
  write_shard(dir + "/e.bin", toks, 50280, 50279, 1);
  LoaderOptions opt;
  opt.seq_len = 32;
  opt.seed = 5;
  opt.raw = raw;
  TokenLoader from_npy({dir + "/a.npy"}, opt), from_bin({dir + "/e.bin"}, opt);
  std::vector<int32_t> i1(3 * 32), t1(3 * 32), i2(3 * 32), t2(3 * 32);
  from_npy.next_batch(3, i1.data(), t1.data());
  from_bin.next_batch(3, i2.data(), t2.data());
  CHECK(i1 == i2);
  CHECK(t1 == t2);
  TokenLoader mixed({dir + "/a.npy", dir + "/d.u32", dir + "/e.bin"}, opt);
  CHECK(mixed.windows_per_epoch() == 3 * (3000 / 32));
}

TEST_CASE("raw token arrays: malformed files are errors naming the file", "[data]") {
  std::string dir = tmp_dir("raw-bad");
  RawTokenOptions raw{1000, 999};
  auto toks = counting_tokens(500, 1000);
  write_npy_tokens(dir + "/good.npy", toks, 2);
  const auto good = file_bytes(dir + "/good.npy");
  auto expect_error = [&](const std::string& p, const std::string& needle, RawTokenOptions o) {
    try {
      auto src = open_token_source(p, true, o);
      std::vector<int32_t> out(src->size());
      src->read(0, src->size(), out.data());
      FAIL("no error for " << p);
    } catch (const Error& e) {
      std::string msg = e.what();
      INFO(msg);
      CHECK(msg.find(p) != std::string::npos);
      CHECK(msg.find(needle) != std::string::npos);
    }
  };
  auto variant = [&](const std::string& name, const std::string& from, const std::string& to) {
    std::string text(good.begin(), good.end());
    size_t at = text.find(from);
    REQUIRE(at != std::string::npos);
    text.replace(at, from.size(), to);  // same length: the header stays the same size
    return write_bytes(dir + "/" + name, std::vector<char>(text.begin(), text.end()));
  };
  expect_error(variant("f8.npy", "'<u2'", "'<f8'"), "dtype", raw);
  expect_error(variant("big.npy", "'<u2'", "'>u2'"), "'>u2'", raw);
  expect_error(variant("fortran.npy", "False", "True "), "C-order", raw);
  expect_error(variant("2d.npy", "(500,)", "(5,100)"), "1-d", raw);
  expect_error(variant("magic.npy", "NUMPY", "NUMPX"), "numpy magic", raw);
  expect_error(write_bytes(dir + "/trunc.npy", std::vector<char>(good.begin(), good.end() - 3)), "truncated", raw);
  expect_error(write_bytes(dir + "/hdr.npy", std::vector<char>(good.begin(), good.begin() + 40)), "truncated", raw);
  expect_error(write_bytes(dir + "/odd.u16", std::vector<char>(7, 0)), "truncated", raw);
  expect_error(dir + "/good.npy", "data.vocab_size", RawTokenOptions{});
  expect_error(dir + "/good.npy", "below data.vocab_size 100", RawTokenOptions{100, 0});  // ids checked as read
  expect_error(dir + "/missing.u32", "readable", raw);
  // A shard whose vocabulary differs from data.vocab_size cannot join raw arrays.
  write_shard(dir + "/other.bin", toks, 1024, 0, 1);
  LoaderOptions opt;
  opt.seq_len = 16;
  opt.raw = raw;
  CHECK_THROWS_WITH(TokenLoader({dir + "/good.npy", dir + "/other.bin"}, opt),
                    Catch::Contains("other.bin") && Catch::Contains("data.vocab_size"));
}

TEST_CASE("mixture: sources drawn in proportion to their weights, resume exact", "[data]") {
  std::string dir = tmp_dir("mixture");
  // Source s holds ids in [1000 s, 1000 s + 1000): each window tells which source it came from.
  for (uint32_t s = 0; s < 3; ++s) {
    std::vector<uint32_t> t(700 + 300 * s);
    for (size_t i = 0; i < t.size(); ++i) t[i] = 1000 * s + uint32_t(i % 1000);
    write_shard(dir + "/s" + std::to_string(s) + ".bin", t, 3000, 0, 1);
  }
  std::vector<LoaderSource> sources = {{"a", {dir + "/s0.bin"}, 5}, {"b", {dir + "/s1.bin"}, 3}, {"c", {dir + "/s2.bin"}, 2}};
  LoaderOptions opt;
  opt.seq_len = 8;
  opt.seed = 11;
  TokenLoader l(sources, opt);
  CHECK(l.is_mixture());
  CHECK(l.source_count() == 3);
  const int n = 20000;
  std::vector<int> counts(3);
  std::vector<int32_t> ids(8), tg(8);
  for (int k = 0; k < n; ++k) {
    l.next_batch(1, ids.data(), tg.data());
    counts[size_t(ids[0] / 1000)] += 1;
    REQUIRE(ids[7] / 1000 == ids[0] / 1000);  // a window never straddles sources
  }
  CHECK(std::abs(counts[0] / double(n) - 0.5) < 0.015);
  CHECK(std::abs(counts[1] / double(n) - 0.3) < 0.015);
  CHECK(std::abs(counts[2] / double(n) - 0.2) < 0.015);
  LoaderState st = l.state();
  CHECK(st.draws == uint64_t(n));
  REQUIRE(st.sources.size() == 3);
  CHECK(st.sources[0].epoch > 0);  // every source wrapped around several times

  // A loader restored to the state continues exactly; a fresh one with the same seed replays from 0.
  TokenLoader r(sources, opt), fresh(sources, opt), again(sources, opt);
  r.set_state(st);
  std::vector<int32_t> a(5 * 8), b(5 * 8), ta(5 * 8), tb(5 * 8);
  for (int k = 0; k < 50; ++k) {
    l.next_batch(5, a.data(), ta.data());
    r.next_batch(5, b.data(), tb.data());
    REQUIRE(a == b);
    REQUIRE(ta == tb);
    fresh.next_batch(5, a.data(), ta.data());
    again.next_batch(5, b.data(), tb.data());
    REQUIRE(a == b);
  }
  CHECK(l.state() == r.state());
  // A single-source state does not fit a mixture, nor a mixture state of another size.
  CHECK_THROWS_AS(r.set_state(LoaderState{}), Error);
  LoaderState two = st;
  two.sources.pop_back();
  CHECK_THROWS_AS(r.set_state(two), Error);
}

// A trainer on a two-source mixture of the bundled sample.
static um::train::TrainConfig mixture_config(const std::string& out_dir) {
  const std::string sample = std::string(ULTRAMEM_SOURCE_DIR) + "/data_tools/sample/";
  nlohmann::json doc = {
      {"model", {{"vocab_size", 50304}, {"valid_vocab", 50257}, {"d_model", 32}, {"n_layers", 1}, {"n_heads", 2},
                 {"max_seq_len", 32}, {"norm", "rmsnorm"}, {"pos_encoding", "rope"}, {"mlp_act", "swiglu"},
                 {"mlp_hidden", 64}, {"bias", false}}},
      {"data", {{"train", {{"plays", {{"path", sample + "shakespeare-train.bin"}, {"weight", 0.7}}},
                           {"heldout", {{"path", sample + "shakespeare-val.bin"}, {"weight", 0.3}}}}},
                {"seq_len", 32}}},
      {"train", {{"max_steps", 6}, {"micro_batch", 2}, {"global_batch", 4}, {"seed", 9}, {"device", "cpu"},
                 {"out_dir", out_dir}}}};
  return um::train::parse_config(doc);
}

TEST_CASE("mixture config: parsed, validated, round-trips; training resumes bitwise", "[data][e2e]") {
  auto cfg = mixture_config(tmp_dir("mix-a"));
  REQUIRE(cfg.data.mixture.size() == 2);
  CHECK(cfg.data.mixture[0].name == "heldout");  // sources in key order
  CHECK(cfg.data.mixture[1].weight == 0.7);
  auto round = um::train::parse_config(um::train::to_json(cfg));
  CHECK(round.data.mixture.size() == 2);
  CHECK(round.data.mixture[1].path == cfg.data.mixture[1].path);
  auto bad = um::train::to_json(cfg);
  bad["data"]["train"]["plays"]["weight"] = 0;
  CHECK_THROWS_WITH(um::train::parse_config(bad), Catch::Contains("data.train.plays.weight"));
  bad = um::train::to_json(cfg);
  bad["data"]["train"]["plays"]["paht"] = "x";
  CHECK_THROWS_WITH(um::train::parse_config(bad), Catch::Contains("data.train.plays.paht"));

  um::train::Trainer a(cfg, false, true);
  std::vector<double> la, lb;
  for (int i = 0; i < 6; ++i) la.push_back(a.step().loss);
  auto cfg_b = mixture_config(tmp_dir("mix-b"));
  {
    um::train::Trainer b(cfg_b, false, true);
    for (int i = 0; i < 3; ++i) lb.push_back(b.step().loss);
    b.save_checkpoint();
  }
  um::train::Trainer b2(cfg_b, true, true);
  for (int i = 0; i < 3; ++i) lb.push_back(b2.step().loss);
  CHECK(la == lb);
  CHECK(a.params().flat_master().to_doubles() == b2.params().flat_master().to_doubles());
  // The checkpoint names the sources; a renamed mixture does not resume silently.
  auto renamed = cfg_b;
  renamed.data.mixture[0].name = "other";
  CHECK_THROWS_WITH(um::train::Trainer(renamed, true, true), Catch::Contains("heldout"));
}

TEST_CASE("prefetcher: the loader's batches in order, state of the last consumed batch", "[data]") {
  std::string dir = tmp_dir("prefetch");
  write_shard(dir + "/a.bin", counting_tokens(3000, 700), 700, 0, 1);
  LoaderOptions opt;
  opt.seq_len = 16;
  opt.seed = 3;
  TokenLoader direct({dir + "/a.bin"}, opt), ahead({dir + "/a.bin"}, opt);
  LoaderState start;
  start.epoch = 1;
  start.cursor = 5;
  direct.set_state(start);
  ahead.set_state(start);  // before the prefetcher exists (as the trainer resumes)
  std::vector<int32_t> ids(3 * 16), tg(3 * 16);
  {
    BatchPrefetcher p(ahead, 3);
    CHECK(p.consumed_state() == start);
    for (int k = 0; k < 200; ++k) {  // several epochs
      BatchPrefetcher::Batch b = p.next();
      direct.next_batch(3, ids.data(), tg.data());
      REQUIRE(std::equal(ids.begin(), ids.end(), b.ids));
      REQUIRE(std::equal(tg.begin(), tg.end(), b.targets));
      REQUIRE(p.consumed_state() == direct.state());
    }
  }  // destroyed while the worker waits for a free buffer: joins cleanly

  // A read error on the worker surfaces from next(), naming the file.
  std::vector<char> bad(2 * 400, 0);
  bad[2 * 300] = char(0xff);  // id 255 >= data.vocab_size 100
  write_bytes(dir + "/bad.u16", bad);
  opt.raw = {100, 0};
  opt.shuffle = false;
  TokenLoader broken({dir + "/bad.u16"}, opt);
  BatchPrefetcher p(broken, 4);
  CHECK_THROWS_WITH([&] { for (int k = 0; k < 10; ++k) p.next(); }(), Catch::Contains("bad.u16"));
}

TEST_CASE("prefetch buffers are page-locked exactly when a GPU is present", "[data]") {
  HostBuffer b(4096);
  REQUIRE(b.data() != nullptr);
  CHECK(b.bytes() == 4096);
  CHECK(b.pinned() == cuda_available());
  static_cast<char*>(b.data())[4095] = 7;  // writable to its end
  HostBuffer moved(std::move(b));
  CHECK(moved.data() != nullptr);
  CHECK(b.data() == nullptr);
}
