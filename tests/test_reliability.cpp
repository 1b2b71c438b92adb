// Reliability, in process (docs/reliability.md): atomic writes under a full disk, checkpoint
// manifests and their verification, recovery of interrupted saves, the non-finite policy, the
// GPU-memory estimate. The real-process tests (SIGKILL, SIGTERM, ENOSPC in ultramem-train) are in
// test_faults.cpp.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "reliability_fixtures.h"
#include "src/io/atomic_file.h"
#include "testing.h"
#include "ultramem/data/raw_tokens.h"
#include "ultramem/io/checkpoint.h"
#include "ultramem/io/checksum.h"
#include "ultramem/io/fault_injection.h"
#include "ultramem/io/safetensors.h"
#include "ultramem/train/reliability.h"
#include "ultramem/train/trainer.h"

using namespace um;
namespace fs = std::filesystem;
using json = nlohmann::json;
using testing::read_bytes;

namespace {
// Turns the injected write failure off however a test ends.
struct WriteFailureAfter {
  explicit WriteFailureAfter(int64_t bytes) { io::set_write_failure_after(bytes); }
  ~WriteFailureAfter() { io::set_write_failure_after(-1); }
};

train::TrainConfig small_config(const std::string& out_dir, const std::string& device, int64_t max_steps = 8) {
  return train::parse_config(testing::small_config_json(out_dir, device, max_steps));
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), std::streamsize(bytes.size()));
}
}  // namespace

TEST_CASE("streaming checksum equals the shard payload checksum for any split", "[io]") {
  std::mt19937_64 rng(7);
  std::string data(1000, '\0');
  for (auto& c : data) c = char(rng());
  for (size_t n : {0, 1, 7, 8, 9, 100, 1000}) {
    const uint64_t want = data::payload_checksum(data.data(), n);
    io::Checksum64 c;
    size_t pos = 0;
    while (pos < n) {
      size_t take = std::min<size_t>(n - pos, 1 + rng() % 13);
      c.update(data.data() + pos, take);
      pos += take;
    }
    CHECK(c.value() == want);
    CHECK(c.bytes() == n);
  }
}

TEST_CASE("a full disk during an atomic write keeps the old file and says so", "[io]") {
  const std::string dir = testing::fresh_run_dir("atomic");
  const std::string path = dir + "/f.txt";
  io::write_file_atomic(path, "old contents");
  for (int64_t budget : {0, 1, 5, 11}) {
    WriteFailureAfter fail(budget);
    CHECK_THROWS_WITH(io::write_file_atomic(path, "new contents, longer than the budget"),
                      Catch::Contains("No space left on device") && Catch::Contains(path + ".tmp"));
    CHECK(read_bytes(path) == "old contents");
    CHECK_FALSE(fs::exists(path + ".tmp"));  // the partial file's space is freed at once
  }
  io::write_file_atomic(path, "new");
  CHECK(read_bytes(path) == "new");
}

TEST_CASE("a real ENOSPC (/dev/full) is a clear error", "[io]") {
  int fd = ::open("/dev/full", O_WRONLY);
  if (fd < 0) {
    WARN("/dev/full is not available here; the injected ENOSPC tests cover the path");
    return;
  }
  std::string block(1 << 16, 'x');
  CHECK_THROWS_WITH(io::write_fully(fd, block.data(), block.size(), "/dev/full"),
                    Catch::Contains("/dev/full") && Catch::Contains("No space left on device"));
  ::close(fd);
}

// A parameter store and moments with recognisable values.
struct SmallState {
  nn::ParameterStore ps;
  io::OptimizerState opt;
  SmallState(double scale = 1) {
    ps.add("a.weight", {3, 4}, nn::ParamInit::normal(1), nn::ParamKind::matrix);
    ps.add("b.bias", {5}, nn::ParamInit::normal(1), nn::ParamKind::bias);
    ps.finalize(Device::cpu(), DType::f32, 11);
    opt.m = testing::randn({ps.flat_numel()}, DType::f32, Device::cpu(), 1, scale);
    opt.v = testing::randn({ps.flat_numel()}, DType::f32, Device::cpu(), 2, scale);
  }
};

// A model with square experts (h == d), where an old [E, d, h] w2 would have the new shape.
struct ExpertState {
  nn::ParameterStore ps;
  io::OptimizerState opt;
  ExpertState() {
    ps.add("transformer.blocks.0.ffn.experts.mlp.w2", {2, 4, 4}, nn::ParamInit::normal(1), nn::ParamKind::matrix);
    ps.finalize(Device::cpu(), DType::f32, 12);
    opt.m = testing::randn({ps.flat_numel()}, DType::f32, Device::cpu(), 1);
    opt.v = testing::randn({ps.flat_numel()}, DType::f32, Device::cpu(), 2);
  }
};

TEST_CASE("checkpoints carry a manifest of checksums; loading names what does not match", "[io]") {
  const std::string out = testing::fresh_run_dir("manifest");
  SmallState s;
  const json state = {{"step", 3}, {"config", {{"k", 1}}}};
  const std::string dir = io::save_checkpoint(out, 3, s.ps, s.opt, state, 3);
  for (const char* f : {"model.safetensors", "optimizer.safetensors", "trainer.json", "config.json", "manifest.json"})
    CHECK(fs::exists(dir + "/" + f));
  io::CheckpointManifest m = io::verify_checkpoint(dir);
  CHECK(m.step == 3);
  CHECK(m.files.size() == 4);
  CHECK(json::parse(read_bytes(dir + "/config.json")) == json({{"k", 1}}));
  CHECK(io::latest_checkpoint(out) == dir);

  SmallState back(0);
  io::load_checkpoint(dir, back.ps, &back.opt);
  CHECK(back.ps.flat_master().to_doubles() == s.ps.flat_master().to_doubles());
  for (const auto& p : s.ps.params())  // the padding between parameters is not saved
    CHECK(back.opt.v.narrow0(p.offset, p.numel()).to_doubles() == s.opt.v.narrow0(p.offset, p.numel()).to_doubles());

  const std::string model = read_bytes(dir + "/model.safetensors");
  SECTION("a flipped bit") {
    std::string b = model;
    b[b.size() - 3] ^= 0x10;
    write_bytes(dir + "/model.safetensors", b);
    CHECK_THROWS_WITH(io::load_checkpoint(dir, back.ps, &back.opt),
                      Catch::Contains("model.safetensors") && Catch::Contains("checksum") && Catch::Contains("corrupt"));
  }
  SECTION("a truncated file") {
    write_bytes(dir + "/model.safetensors", model.substr(0, model.size() - 8));
    CHECK_THROWS_WITH(io::load_checkpoint(dir, back.ps, &back.opt),
                      Catch::Contains("model.safetensors") && Catch::Contains("truncated"));
  }
  SECTION("a missing file") {
    fs::remove(dir + "/optimizer.safetensors");
    CHECK_THROWS_WITH(io::load_checkpoint(dir, back.ps, &back.opt), Catch::Contains("optimizer.safetensors"));
    io::load_checkpoint(dir, back.ps, nullptr);  // evaluation needs the weights only
  }
  SECTION("another model's shapes") {
    nn::ParameterStore other;
    other.add("a.weight", {4, 3}, nn::ParamInit::normal(1), nn::ParamKind::matrix);
    other.add("b.bias", {5}, nn::ParamInit::normal(1), nn::ParamKind::bias);
    other.finalize(Device::cpu(), DType::f32, 1);
    CHECK_THROWS_WITH(io::load_checkpoint(dir, other, nullptr), Catch::Contains("a.weight") && Catch::Contains("[3,4]"));
  }
  SECTION("a trainer.json whose step disagrees with the manifest") {
    // Rewrite trainer.json and its manifest entry consistently: the cross-check still catches it.
    const std::string t = json({{"step", 4}}).dump();
    write_bytes(dir + "/trainer.json", t);
    json man = json::parse(read_bytes(dir + "/manifest.json"));
    man["files"]["trainer.json"] = {{"bytes", t.size()}, {"checksum", io::checksum_hex(data::payload_checksum(t.data(), t.size()))}};
    write_bytes(dir + "/manifest.json", man.dump());
    CHECK_THROWS_WITH(io::load_checkpoint(dir, back.ps, &back.opt), Catch::Contains("trainer.json: step"));
  }
}

TEST_CASE("hostile checkpoint manifests are clear errors", "[io]") {
  const std::string ok = R"({"format": "ultramem checkpoint", "version": 2, "step": 1, "files": {)"
                         R"("model.safetensors": {"bytes": 8, "checksum": "0123456789abcdef"},)"
                         R"("trainer.json": {"bytes": 2, "checksum": "0000000000000000"}}})";
  CHECK(io::parse_checkpoint_manifest(ok, "m.json").files.size() == 2);
  struct Case {
    std::string text, needle;
  } cases[] = {
      {"{", "JSON"},
      {"[]", "object"},
      {R"({"format": "other", "version": 2, "step": 1, "files": {}})", "format"},
      {R"({"format": "ultramem checkpoint", "version": 4, "step": 1, "files": {}})", "version"},
      {R"({"format": "ultramem checkpoint", "version": 1, "step": 1, "files": {}})", "version"},
      {R"({"format": "ultramem checkpoint", "version": 2, "step": -1, "files": {}})", "step"},
      {R"({"format": "ultramem checkpoint", "version": 2, "step": 1})", "files"},
      {R"({"format": "ultramem checkpoint", "version": 2, "step": 1, "files": {"../../etc/passwd": {"bytes": 1, "checksum": "0000000000000000"}}})",
       "plain file name"},
      {R"({"format": "ultramem checkpoint", "version": 2, "step": 1, "files": {"model.safetensors": {"bytes": -5, "checksum": "0000000000000000"}}})",
       "bytes"},
      {R"({"format": "ultramem checkpoint", "version": 2, "step": 1, "files": {"model.safetensors": {"bytes": 5, "checksum": "xyz"}}})",
       "checksum"},
      {R"({"format": "ultramem checkpoint", "version": 2, "step": 1, "files": {"trainer.json": {"bytes": 5, "checksum": "0000000000000000"}}})",
       "model.safetensors"},
      {"{\"format\": " + std::string(100000, '[') + std::string(100000, ']') + "}", "nested"},  // deep nesting
  };
  for (const auto& c : cases) {
    INFO(c.text.substr(0, 200));
    CHECK_THROWS_WITH(io::parse_checkpoint_manifest(c.text, "m.json"), Catch::Contains(c.needle));
  }
}

TEST_CASE("a failed checkpoint write (full disk) at any byte leaves the previous checkpoint current", "[io]") {
  const std::string out = testing::fresh_run_dir("enospc");
  SmallState s;
  const std::string first = io::save_checkpoint(out, 1, s.ps, s.opt, {{"step", 1}}, 3);
  const std::string model_before = read_bytes(first + "/model.safetensors");
  // The size of a whole checkpoint save, measured by a save that succeeds.
  const std::string probe = testing::fresh_run_dir("enospc-probe");
  const int64_t budget_start = 1 << 30;
  int64_t total = 0;
  {
    WriteFailureAfter fail(budget_start);
    io::save_checkpoint(probe, 2, s.ps, s.opt, {{"step", 2}}, 3);
    total = budget_start - io::write_failure_budget();
  }
  REQUIRE(total > 0);
  for (int64_t at = 0; at < total; at += std::max<int64_t>(1, total / 23)) {
    INFO("failing after " << at << " of " << total << " bytes");
    {
      WriteFailureAfter fail(at);
      CHECK_THROWS_WITH(io::save_checkpoint(out, 2, s.ps, s.opt, {{"step", 2}}, 3),
                        Catch::Contains("No space left on device") && Catch::Contains("step-00000001 is intact"));
    }
    CHECK(io::latest_checkpoint(out) == first);
    CHECK_FALSE(fs::exists(out + "/checkpoints/step-00000002.tmp"));
    CHECK(read_bytes(first + "/model.safetensors") == model_before);
    SmallState back(0);
    io::load_checkpoint(io::latest_checkpoint(out), back.ps, &back.opt);
  }
  // With space again the same save succeeds.
  const std::string saved = io::save_checkpoint(out, 2, s.ps, s.opt, {{"step", 2}}, 3);
  CHECK(saved == io::latest_checkpoint(out));
}

TEST_CASE("interrupted saves are recovered: stale temporaries, a missing or damaged latest, a re-save", "[io]") {
  const std::string out = testing::fresh_run_dir("recover");
  const fs::path root = fs::path(out) / "checkpoints";
  SmallState s;
  CHECK(io::latest_checkpoint(out).empty());
  io::save_checkpoint(out, 1, s.ps, s.opt, {{"step", 1}}, 5);
  const std::string two = io::save_checkpoint(out, 2, s.ps, s.opt, {{"step", 2}}, 5);
  SECTION("a partial directory of a later step is ignored, then removed by the next save") {
    fs::create_directories(root / "step-00000003.tmp");
    write_bytes((root / "step-00000003.tmp" / "model.safetensors").string(), "partial");
    CHECK(io::latest_checkpoint(out) == two);
    io::save_checkpoint(out, 3, s.ps, s.opt, {{"step", 3}}, 5);
    CHECK_FALSE(fs::exists(root / "step-00000003.tmp"));
  }
  SECTION("latest missing (killed between the first rename and the first latest)") {
    fs::remove(root / "latest");
    CHECK(io::latest_checkpoint(out) == two);
  }
  SECTION("latest naming a removed or hostile directory") {
    write_bytes((root / "latest").string(), "step-00000009\n");
    CHECK(io::latest_checkpoint(out) == two);
    write_bytes((root / "latest").string(), "../../elsewhere\n");
    CHECK(io::latest_checkpoint(out) == two);
  }
  SECTION("a re-save of a step killed between its two renames") {
    fs::rename(root / "step-00000002", root / "step-00000002.replaced");
    CHECK(io::latest_checkpoint(out) == two);  // the old copy goes back under its name
    CHECK(fs::exists(root / "step-00000002" / "manifest.json"));
    io::save_checkpoint(out, 2, s.ps, s.opt, {{"step", 2}}, 5);
    CHECK_FALSE(fs::exists(root / "step-00000002.replaced"));
  }
  SECTION("keep_last prunes the oldest, ordering steps by number") {
    io::save_checkpoint(out, 123456789, s.ps, s.opt, {{"step", 123456789}}, 2);
    CHECK_FALSE(fs::exists(root / "step-00000001"));
    CHECK(fs::exists(root / "step-00000002"));
    CHECK(fs::exists(root / "step-123456789"));
    CHECK(io::latest_checkpoint(out) == (root / "step-123456789").string());
  }
}

TEST_CASE("format-1 checkpoints (no manifest) still load", "[io]") {
  const std::string out = testing::fresh_run_dir("v1");
  SmallState s;
  const std::string dir = io::save_checkpoint(out, 1, s.ps, s.opt, {{"step", 1}}, 3);
  fs::remove(dir + "/manifest.json");
  fs::remove(dir + "/config.json");
  CHECK(io::verify_checkpoint(dir).format == 1);
  SmallState back(0);
  CHECK(io::load_checkpoint(io::latest_checkpoint(out), back.ps, &back.opt)["step"] == 1);
  CHECK(back.ps.flat_master().to_doubles() == s.ps.flat_master().to_doubles());
}

TEST_CASE("format-2 checkpoints load, except a model with experts (w2 was [E, d, h])", "[io]") {
  // The manifest is rewritten as a format-2 one: the files and their checksums are the same.
  auto as_format_2 = [](const std::string& dir) {
    json man = json::parse(read_bytes(dir + "/manifest.json"));
    man["version"] = 2;
    write_bytes(dir + "/manifest.json", man.dump());
  };
  const std::string out = testing::fresh_run_dir("v2");
  SmallState s;
  const std::string dir = io::save_checkpoint(out, 1, s.ps, s.opt, {{"step", 1}}, 3);
  as_format_2(dir);
  SmallState back(0);
  CHECK(io::load_checkpoint(dir, back.ps, &back.opt)["step"] == 1);
  CHECK(back.ps.flat_master().to_doubles() == s.ps.flat_master().to_doubles());

  const std::string out2 = testing::fresh_run_dir("v2-moe");
  ExpertState m, m_back;
  const std::string dir2 = io::save_checkpoint(out2, 1, m.ps, m.opt, {{"step", 1}}, 3);
  CHECK(io::load_checkpoint(dir2, m_back.ps, &m_back.opt)["step"] == 1);  // format 3 itself loads
  as_format_2(dir2);
  CHECK_THROWS_WITH(io::load_checkpoint(dir2, m_back.ps, &m_back.opt),
                    Catch::Contains("transformer.blocks.0.ffn.experts.mlp.w2") && Catch::Contains("format 2") &&
                        Catch::Contains("[E, h, d]"));
}

TEST_CASE("hostile headers found by review and fuzzing are clear errors", "[io]") {
  auto st = [](const std::string& header, size_t data) {
    std::string f(8, '\0');
    uint64_t n = header.size();
    std::memcpy(f.data(), &n, 8);
    return f + header + std::string(data, '\1');
  };
  auto parse_st = [](const std::string& f) { return io::parse_safetensors_header(f.data(), f.size(), f.size(), "x.safetensors"); };
  // [2^40, 2^40] elements used to wrap the element count to 0 and pass with an empty byte range.
  CHECK_THROWS_WITH(parse_st(st(R"({"a":{"dtype":"F32","shape":[1099511627776,1099511627776],"data_offsets":[0,0]}})", 0)),
                    Catch::Contains("2^44"));
  CHECK_THROWS_WITH(parse_st(st("{\"a\":" + std::string(5000, '[') + std::string(5000, ']') + "}", 0)), Catch::Contains("nested"));
  CHECK_THROWS_WITH(parse_st(st(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,18446744073709551615]}})", 8)),
                    Catch::Contains("byte range"));
  CHECK(parse_st(st(R"({"e":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"f":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4))
            .entries.size() == 2);  // an empty tensor overlaps nothing
  // .npy shapes that used to throw std::invalid_argument / std::out_of_range from stoull.
  auto npy = [](const std::string& shape) {
    std::string h = "{'descr': '<u2', 'fortran_order': False, 'shape': " + shape + ", }";
    std::string f = std::string("\x93NUMPY\x01\x00", 8);
    uint16_t len = uint16_t(h.size());
    f.append(reinterpret_cast<const char*>(&len), 2);
    return f + h;
  };
  for (const char* shape : {"(  ,)", "(99999999999999999999999,)", "(1 2,)", "(18446744073709551615,)"}) {
    INFO(shape);
    std::string f = npy(shape);
    CHECK_THROWS_AS(data::parse_npy(f.data(), f.size(), "x.npy"), Error);
  }
  // A shard whose token count times its width overflows.
  std::string shard(1024, '\0');
  std::memcpy(shard.data(), "UMTOKENS", 8);
  const uint32_t version = 1, width = 4, vocab = 10, eos = 1;
  const uint64_t count = uint64_t(1) << 62;
  std::memcpy(shard.data() + 8, &version, 4);
  std::memcpy(shard.data() + 12, &width, 4);
  std::memcpy(shard.data() + 16, &count, 8);
  std::memcpy(shard.data() + 24, &vocab, 4);
  std::memcpy(shard.data() + 28, &eos, 4);
  CHECK_THROWS_WITH(data::parse_shard_header(shard.data(), shard.size(), "x.bin", false), Catch::Contains("truncated"));
}

TEST_CASE("hostile config files are clear errors (fuzzer findings)", "[config]") {
  const std::string dir = testing::fresh_run_dir("hostile-config");
  auto load = [&](const std::string& text) {
    write_bytes(dir + "/c.json", text);
    return train::load_config(dir + "/c.json", {});
  };
  // A number beyond double: nlohmann throws out_of_range, not parse_error (found by fuzz_config_json).
  CHECK_THROWS_AS(load(R"({"train": {"max_steps": 262222333333e3333333332}})"), Error);
  CHECK_THROWS_WITH(load(R"({"train": {"max_steps": 1e400}})"), Catch::Contains("c.json") && Catch::Contains("valid JSON"));
  CHECK_THROWS_WITH(load(std::string(100000, '[') + std::string(100000, ']')), Catch::Contains("nested"));
  CHECK_THROWS_WITH(load(R"({"data": {"train": "x.bin"}, "train": {"max_steps": 9.3e18}})"), Catch::Contains("train.max_steps"));
  CHECK_THROWS_WITH(load(R"({"data": {"train": "x.bin", "eos_id": 18446744073709551615}})"), Catch::Contains("data.eos_id"));
  CHECK_THROWS_WITH(load(R"({"data": {"train": "x.bin"}, "model": {"n_layers": [[[[[[[[[[1]]]]]]]]]]}})"),
                    Catch::Contains("model.n_layers") && Catch::Contains("an array"));
  CHECK_THROWS_WITH(train::load_config(dir, {}), Catch::Contains(dir));  // a directory
}

TEST_CASE("train.nonfinite and train.check_memory are validated", "[config]") {
  json doc = testing::small_config_json("runs/x", "cpu", 4);
  auto with = [&](const json& nf) {
    json d = doc;
    d["train"]["nonfinite"] = nf;
    return d;
  };
  train::TrainConfig c = train::parse_config(with({{"policy", "skip"}, {"max_skips", 3}}));
  CHECK(c.train.nonfinite_policy == "skip");
  CHECK(c.train.nonfinite_max_skips == 3);
  CHECK(train::to_json(c)["train"]["nonfinite"]["max_skips"] == 3);
  CHECK(train::parse_config(train::to_json(c)).train.nonfinite_policy == "skip");  // round trip
  CHECK_THROWS_WITH(train::parse_config(with({{"policy", "ignore"}})), Catch::Contains("train.nonfinite.policy"));
  CHECK_THROWS_WITH(train::parse_config(with({{"max_skips", -1}})), Catch::Contains("train.nonfinite.max_skips"));
  CHECK_THROWS_WITH(train::parse_config(with({{"polcy", "skip"}})), Catch::Contains("train.nonfinite.polcy"));
  CHECK_THROWS_WITH(train::parse_config(with("skip")), Catch::Contains("train.nonfinite"));
  doc["train"]["check_memory"] = "yes";
  CHECK_THROWS_WITH(train::parse_config(doc), Catch::Contains("train.check_memory"));
}

TEST_CASE("GPU memory estimate: the arithmetic, and a clear refusal", "[train]") {
  train::TrainConfig c = small_config("runs/x", "cpu");
  const int64_t n = 1000064;
  train::MemoryEstimate f32 = train::estimate_memory(c, n, DType::f32);
  CHECK(f32.weights == 4.0 * n);
  CHECK(f32.gradients == 4.0 * n);
  CHECK(f32.optimizer == 8.0 * n);
  CHECK(f32.compute_copy == 0);
  train::MemoryEstimate bf16 = train::estimate_memory(c, n, DType::bf16);
  CHECK(bf16.compute_copy == 2.0 * n);
  CHECK(bf16.activations == 1.25 * train::estimate_activation_bytes(c, DType::bf16));
  CHECK(bf16.total() == bf16.weights + bf16.gradients + bf16.optimizer + bf16.compute_copy + bf16.activations + bf16.workspace);
  // Activations scale with the tokens of a micro-batch.
  train::TrainConfig c2 = c;
  c2.train.micro_batch *= 2;
  CHECK(train::estimate_activation_bytes(c2, DType::bf16) == Approx(2 * train::estimate_activation_bytes(c, DType::bf16)));
  // GPT-2 124M at 8 x 1024 in bf16: ~124M parameters x 18 bytes = 2.1 GiB of state.
  train::TrainConfig g = train::parse_config({{"data", {{"train", "x.bin"}}}, {"train", {{"micro_batch", 8}}}});
  train::MemoryEstimate e = train::estimate_memory(g, 124439808, DType::bf16);
  CHECK(e.weights + e.gradients + e.optimizer + e.compute_copy == Approx(124439808.0 * 18));
  CHECK(e.activations > 4e9);   // logits alone: 8192 x 50304 x 2 bytes x 2 (and their gradient) = 1.6 GB
  CHECK(e.activations < 40e9);
  CHECK_NOTHROW(train::check_memory_fits(e, size_t(80) << 30, size_t(80) << 30, g, "H100"));
  CHECK_THROWS_WITH(train::check_memory_fits(e, size_t(4) << 30, size_t(80) << 30, g, "a small GPU"),
                    Catch::Contains("a small GPU") && Catch::Contains("4.0 GiB free") &&
                        Catch::Contains("train.micro_batch") && Catch::Contains("activations") &&
                        Catch::Contains("train.check_memory=false"));
}

// The arena peak of a first training step, measured on a fresh thread (arenas are per thread, and
// their peak is a high-water mark since construction).
static double arena_peak_of_one_step(const train::TrainConfig& c) {
  double peak = 0;
  std::string error;
  std::thread th([&] {
    try {
      train::Trainer t(c, false, true);
      CHECK(std::isfinite(t.step().loss));
      peak = double(t.arena_peak_bytes());
    } catch (const std::exception& e) {
      error = e.what();
    }
  });
  th.join();
  INFO(error);
  REQUIRE(error.empty());
  return peak;
}

TEST_CASE("the activation estimate brackets a measured CPU step", "[e2e]") {
  train::TrainConfig c = small_config(testing::fresh_run_dir("estimate"), "cpu");
  c.model.dropout = 0;
  c.train.micro_batch = 4;
  c.train.global_batch = 4;
  const double measured = arena_peak_of_one_step(c);
  const double estimate = train::estimate_activation_bytes(c, DType::f32);
  INFO("measured " << measured << " estimated " << estimate);
  CHECK(estimate > 0.7 * measured);
  CHECK(estimate < 3.0 * measured);
}

static std::vector<double> weights_of(train::Trainer& t) { return t.params().flat_master().to_doubles(); }

TEST_CASE("non-finite gradients: policy skip drops the update and continues", "[e2e]") {
  train::TrainConfig c = small_config(testing::fresh_run_dir("skip"), "cpu", 6);
  c.train.nonfinite_policy = "skip";
  c.train.nonfinite_max_skips = 2;
  train::Trainer t(c, false, true);
  t.faults().nan_grad_steps = {2, 4};
  t.faults().nan_grad_param = "transformer.blocks.1.ff_norm.weight";
  t.step();
  const auto w1 = weights_of(t);
  train::StepStats s2 = t.step();
  CHECK(s2.skipped);
  CHECK_THAT(s2.nonfinite, Catch::Contains("transformer.blocks.1.ff_norm.weight"));
  CHECK(weights_of(t) == w1);  // no update
  CHECK(t.completed_steps() == 2);
  CHECK_FALSE(t.step().skipped);
  CHECK(weights_of(t) != w1);
  CHECK(t.step().skipped);
  CHECK(t.skipped_steps() == 2);
  // The budget is spent: the next one stops with a checkpoint of the last good state.
  t.faults().nan_loss_steps = {5};
  CHECK_THROWS_AS(t.step(), train::NonFiniteStop);
  CHECK(io::latest_checkpoint(c.train.out_dir).find("step-00000004") != std::string::npos);
}

TEST_CASE("non-finite gradient: policy stop saves the last good state and names step and parameter", "[e2e]") {
  // Reference: 5 clean steps.
  train::TrainConfig ref_cfg = small_config(testing::fresh_run_dir("stop-ref"), "cpu", 5);
  train::Trainer ref(ref_cfg, false, true);
  std::vector<double> ref_losses;
  for (int i = 0; i < 5; ++i) ref_losses.push_back(ref.step().loss);

  train::TrainConfig c = small_config(testing::fresh_run_dir("stop"), "cpu", 5);
  std::vector<double> losses;
  {
    train::Trainer t(c, false, true);
    t.faults().nan_grad_steps = {3};
    t.faults().nan_grad_param = "transformer.blocks.1.attn_out.weight";
    for (int i = 0; i < 2; ++i) losses.push_back(t.step().loss);
    try {
      t.step();
      FAIL("no stop");
    } catch (const train::NonFiniteStop& e) {
      std::string msg = e.what();
      INFO(msg);
      CHECK(msg.find("step 3") != std::string::npos);
      CHECK(msg.find("gradient, first in transformer.blocks.1.attn_out.weight") != std::string::npos);
      CHECK(msg.find("step-00000002") != std::string::npos);
    }
  }
  // The checkpoint is the state after step 2, its loader before step 3: resuming replays step 3's data,
  // so the continuation equals the clean run bit for bit.
  train::Trainer r(c, true, true);
  CHECK(r.completed_steps() == 2);
  for (int i = 0; i < 3; ++i) losses.push_back(r.step().loss);
  CHECK(losses == ref_losses);
  CHECK(weights_of(r) == weights_of(ref));
}

TEST_CASE("non-finite loss: policy stop names the step and the loss", "[e2e]") {
  train::TrainConfig c = small_config(testing::fresh_run_dir("stop-loss"), "cpu", 5);
  train::Trainer t(c, false, true);
  t.faults().nan_loss_steps = {1};
  CHECK_THROWS_WITH(t.step(), Catch::Contains("step 1") && Catch::Contains("non-finite loss") &&
                                  Catch::Contains("step-00000000"));
}

TEST_CASE("resume is exact through run(): periodic checkpoints, metrics, optimizer state (CPU)", "[e2e]") {
  train::TrainConfig a_cfg = small_config(testing::fresh_run_dir("run-a"), "cpu", 8);
  train::Trainer a(a_cfg, false, true);
  a.run();
  train::TrainConfig b_cfg = small_config(testing::fresh_run_dir("run-b"), "cpu", 8);
  b_cfg.train.checkpoint_every = 3;
  {
    train::Trainer b(b_cfg, false, true);
    b.run(5);  // checkpoint at 3; steps 4 and 5 are logged, then lost
  }
  train::Trainer b2(b_cfg, true, true);
  CHECK(b2.completed_steps() == 3);
  b2.run();
  CHECK(weights_of(a) == weights_of(b2));
  CHECK(a.optimizer_state().m.to_doubles() == b2.optimizer_state().m.to_doubles());
  CHECK(a.optimizer_state().v.to_doubles() == b2.optimizer_state().v.to_doubles());
  auto losses = [](const std::string& dir) {
    std::vector<std::pair<int64_t, double>> out;
    std::ifstream in(dir + "/metrics.jsonl");
    for (std::string line; std::getline(in, line);) {
      json j = json::parse(line);
      if (j.contains("loss")) out.push_back({j["step"].get<int64_t>(), j["loss"].get<double>()});
    }
    return out;
  };
  CHECK(losses(a_cfg.train.out_dir).size() == 8);
  CHECK(losses(a_cfg.train.out_dir) == losses(b_cfg.train.out_dir));  // the lost steps' lines were dropped
  CHECK(read_bytes(a_cfg.train.out_dir + "/checkpoints/step-00000008/model.safetensors") ==
        read_bytes(b_cfg.train.out_dir + "/checkpoints/step-00000008/model.safetensors"));
}

TEST_CASE("a stop request ends run() after the step with a checkpoint", "[e2e]") {
  train::TrainConfig c = small_config(testing::fresh_run_dir("request"), "cpu", 8);
  train::Trainer t(c, false, true);
  t.run(2);
  train::request_stop(SIGTERM);
  t.run();
  train::clear_stop_request();
  CHECK(t.stopped_by_signal() == SIGTERM);
  CHECK(t.completed_steps() == 2);
  CHECK(io::latest_checkpoint(c.train.out_dir).find("step-00000002") != std::string::npos);
}

TEST_CASE("metrics of steps after the resumed checkpoint, and a torn line, are dropped", "[train]") {
  const std::string dir = testing::fresh_run_dir("metrics");
  write_bytes(dir + "/metrics.jsonl", "{\"step\":1,\"loss\":2}\n{\"step\":2,\"val_loss\":3}\n{\"step\":3,\"loss\":1}\n{\"step\":4,\"lo");
  train::truncate_metrics(dir, 2);
  CHECK(read_bytes(dir + "/metrics.jsonl") == "{\"step\":1,\"loss\":2}\n{\"step\":2,\"val_loss\":3}\n");
  CHECK(train::config_differences({{"a", {{"b", 1}, {"c", 2}}}}, {{"a", {{"b", 1}, {"c", 3}}}, {"d", 0}}) ==
        std::vector<std::string>{"a.c", "d"});
}

// ---- GPU ----

TEST_CASE("GPU: the non-finite policies (skip, stop) and exact resume after a stop", "[gpu][e2e]") {
  UM_REQUIRE_GPU();
  train::TrainConfig ref_cfg = small_config(testing::fresh_run_dir("gpu-nf-ref"), "cuda", 5);
  train::Trainer ref(ref_cfg, false, true);
  std::vector<double> ref_losses;
  for (int i = 0; i < 5; ++i) ref_losses.push_back(ref.step().loss);

  train::TrainConfig c = small_config(testing::fresh_run_dir("gpu-nf"), "cuda", 5);
  std::vector<double> losses;
  {
    train::Trainer t(c, false, true);
    t.faults().nan_grad_steps = {3};
    t.faults().nan_grad_param = "transformer.blocks.0.att_proj.weight";
    for (int i = 0; i < 2; ++i) losses.push_back(t.step().loss);
    CHECK_THROWS_WITH(t.step(), Catch::Contains("step 3") && Catch::Contains("transformer.blocks.0.att_proj.weight"));
  }
  train::Trainer r(c, true, true);
  for (int i = 0; i < 3; ++i) losses.push_back(r.step().loss);
  CHECK(losses == ref_losses);
  CHECK(weights_of(r) == weights_of(ref));

  train::TrainConfig sk = small_config(testing::fresh_run_dir("gpu-skip"), "cuda", 4);
  sk.train.nonfinite_policy = "skip";
  train::Trainer s(sk, false, true);
  s.step();
  const auto w1 = weights_of(s);
  s.faults().nan_loss_steps = {2};
  CHECK(s.step().skipped);
  CHECK(weights_of(s) == w1);
}

TEST_CASE("GPU: a config that does not fit is refused before training, naming the estimate", "[gpu]") {
  UM_REQUIRE_GPU();
  size_t free_bytes = 0, total = 0;
  cuda_mem_info(&free_bytes, &total);
  train::TrainConfig c = small_config(testing::fresh_run_dir("gpu-oom"), "cuda", 4);
  // 96 blocks of d 8192: ~77B parameters, over 1 TiB of weights and AdamW state.
  c.model.d_model = 8192;
  c.model.n_heads = 64;
  c.model.mlp_hidden = 22016;
  c.model.n_layers = 96;
  CHECK_THROWS_WITH(train::Trainer(c, false, true),
                    Catch::Contains("free of") && Catch::Contains("AdamW state") && Catch::Contains("train.micro_batch"));
  size_t after = 0;
  cuda_mem_info(&after, &total);
  CHECK(after + (size_t(1) << 30) > free_bytes);  // refused before allocating the parameters
  // The small config fits and trains.
  train::TrainConfig fits = small_config(testing::fresh_run_dir("gpu-fits"), "cuda", 2);
  // The activation estimate against the measured arena peak of a bf16 GPU step (loosely: tiny models
  // run some kernels on f32 copies).
  const double measured = arena_peak_of_one_step(fits), estimate = train::estimate_activation_bytes(fits, DType::bf16);
  INFO("measured " << measured << " estimated " << estimate);
  CHECK(estimate > 0.5 * measured);
  CHECK(estimate < 4.0 * measured);
}
