// Memory layers in the model: Tucker SVD and aux loss, placement, geometry, config checks, and the
// tiny Memory+ / UltraMem v1 / UltraMemV2 models training end to end on the CPU (and on the GPU).
#include <filesystem>
#include <fstream>
#include <unistd.h>

#include "src/nn/memory.h"
#include "testing.h"
#include "ultramem/ops/tucker.h"
#include "ultramem/train/trainer.h"

using namespace um;
namespace fs = std::filesystem;
using json = nlohmann::json;

TEST_CASE("small_svd reconstructs the matrix with orthonormal singular vectors", "[memory]") {
  for (int r : {1, 2, 3, 5}) {
    std::vector<double> A = testing::randn({r, r}, DType::f64, Device::cpu(), 100 + r).to_doubles();
    ops::SmallSvd s = ops::small_svd(A, r);
    for (int i = 0; i + 1 < r; ++i) CHECK(s.sigma[i] >= s.sigma[i + 1]);
    for (int i = 0; i < r; ++i)
      for (int j = 0; j < r; ++j) {
        double rec = 0, uu = 0, vv = 0;
        for (int k = 0; k < r; ++k) {
          rec += s.U[i * r + k] * s.sigma[k] * s.V[j * r + k];
          uu += s.U[k * r + i] * s.U[k * r + j];
          vv += s.V[k * r + i] * s.V[k * r + j];
        }
        CHECK(std::abs(rec - A[i * r + j]) < 1e-12);
        CHECK(std::abs(uu - (i == j)) < 1e-12);
        CHECK(std::abs(vv - (i == j)) < 1e-12);
      }
  }
}

TEST_CASE("tucker aux loss: value and float64 gradient check", "[memory]") {
  // 2 cores, 2 heads, rank 3: U(0, 1) entries make the second and third singular values exceed the margin.
  Tensor cores = testing::uniform({2, 2, 3, 3}, DType::f64, Device::cpu(), 7, 0.0, 1.0);
  auto svd = ops::tucker_core_svd(cores);
  double expect = 0;
  for (const auto& s : svd)
    for (int i = 1; i < 3; ++i) expect += std::pow(std::max(0.0, s.sigma[i] - 0.15), 2);
  expect *= 0.5 / (2 * 2);  // alpha 0.5, mean over 2 heads x 2 trailing values
  CHECK(std::abs(ops::tucker_aux_loss(cores, 0.5, 0.15).to_doubles()[0] - expect) < 1e-12);
  CHECK(expect > 0);
  cores.set_requires_grad(true);
  testing::gradcheck([](const std::vector<Tensor>& in) { return ops::tucker_aux_loss(in[0], 0.5, 0.15); }, {cores});
}

TEST_CASE("mem_insert_way: full, skip-layer pairs, and errors naming the key", "[memory]") {
  nn::MemoryConfig m;
  m.type = "ultramem_v1";
  m.insert_way = "full";
  CHECK(nn::memory_placements(m, 3, "k").size() == 3);
  m.insert_way = "1:2/3:5";
  auto p = nn::memory_placements(m, 6, "k");
  REQUIRE(p.size() == 2);
  CHECK((p[0].read == 1 && p[0].write == 2 && p[1].read == 3 && p[1].write == 5));
  m.insert_way = "no_mem";
  CHECK(nn::memory_placements(m, 6, "k").empty());
  for (std::string bad : {"2:1", "1:6", "1:2/1:3", "x:1", "1-2", "1:2/", "", "1:2:3"}) {
    m.insert_way = bad;
    INFO(bad);
    CHECK_THROWS_WITH(nn::memory_placements(m, 6, "model.mem_insert_way"), Catch::Contains("model.mem_insert_way"));
  }
}

TEST_CASE("UltraMemV2 release geometry: shared pool, sharing window, offsets", "[memory]") {
  auto cfg = train::parse_config(testing::read_config("ultramemv2-227m-1.2b.json"));
  auto g0 = nn::memory_geometry(cfg.model, 0, 20), g7 = nn::memory_geometry(cfg.model, 7, 20);
  CHECK(g0.pool_rows == 360 * 360 * 20);
  CHECK(g0.n == 1138);  // floor(sqrt(2,592,000 x 0.5))
  CHECK(g0.value_num == 1138 * 1138);
  CHECK(g0.virtual_num == 1138 * 1138);
  CHECK(g7.offset == 7 * 360 * 360);
  CHECK((g0.rank == 2 && g0.q_ranks == 2 && g0.cores == 2 && g0.groups == 1));
  auto v1 = train::parse_config(testing::read_config("ultramem-v1-small.json"));
  auto g = nn::memory_geometry(v1.model, 1, 3);
  CHECK((g.n == 1024 && g.value_num == 512 * 512 && g.virtual_num == 1024 * 1024 && g.groups == 4 && g.pool == 1));
}

TEST_CASE("memory config mistakes name the key", "[memory]") {
  json doc = testing::read_config("tiny-memory-plus.json");
  auto expect_error = [&](const std::string& key, const json& value, const std::string& fragment) {
    json d = doc;
    d["model"][key] = value;
    INFO(key);
    CHECK_THROWS_WITH(train::parse_config(d), Catch::Contains(fragment));
  };
  expect_error("mem_vdim", 64, "model.mem_vdim");          // Memory+ needs vdim == d_model
  expect_error("mem_knn", 30, "model.mem_knn");            // more picks than keys per side
  expect_error("mem_type", "ultramem", "model.mem_type");  // not a known type
  expect_error("mem_insert_way", "3:1", "model.mem_insert_way");
  expect_error("mem_output_dropout_rate", 0.1, "model.mem_output_dropout_rate");  // unsupported key
  json v2 = testing::read_config("tiny-ultramem-v2.json");
  v2["model"]["mem_share_ratio"] = 0.01;  // floor(sqrt(1024 x 0.01)) = 3 keys per side < knn 8
  CHECK_THROWS_WITH(train::parse_config(v2), Catch::Contains("model.mem_knn") && Catch::Contains("3 keys per side"));
  json v1 = testing::read_config("tiny-ultramem-v1.json");
  v1["model"]["mem_value_expand_time"] = 3;
  CHECK_THROWS_WITH(train::parse_config(v1), Catch::Contains("model.mem_value_expand_time"));
}

// A fresh empty directory for this file's tests (testing::fresh_dir, tagged by file).
static std::string scratch_dir(const std::string& name) { return testing::fresh_dir("mem-" + name); }

static train::TrainConfig tiny_memory_config(const std::string& file, const std::string& out, const std::string& dev,
                                             int64_t steps) {
  json d = testing::read_config(file);
  const std::string sample = std::string(ULTRAMEM_SOURCE_DIR) + "/data_tools/sample/";
  d["model"]["d_model"] = d["model"]["mem_type"] == "memory_plus" ? 128 : 64;
  d["model"]["n_layers"] = 4;
  d["model"]["mlp_hidden"] = 128;
  d["data"] = {{"train", sample + "shakespeare-train.bin"}, {"val", sample + "shakespeare-val.bin"}, {"seq_len", 64}};
  d["train"] = {{"max_steps", steps}, {"micro_batch", 4}, {"global_batch", 8}, {"seed", 3}, {"device", dev},
                {"val_batches", 2}, {"log_every", 5}, {"out_dir", out}, {"keep_last", 3}};
  return train::parse_config(d);
}

TEST_CASE("tiny memory models: loss falls on real text, health statistics logged (CPU)", "[e2e][memory]") {
  for (std::string file : {"tiny-ultramem-v2.json", "tiny-ultramem-v1.json", "tiny-memory-plus.json"}) {
    INFO(file);
    auto cfg = tiny_memory_config(file, scratch_dir("loss"), "cpu", 30);
    cfg.data.val = "";
    train::Trainer t(cfg, false, true);
    t.run();
    // metrics.jsonl: every step's loss; a logged step carries memory statistics and aux losses.
    std::ifstream in(fs::path(cfg.train.out_dir) / "metrics.jsonl");
    json step5;
    double first = 0, last = 0;
    for (std::string line; std::getline(in, line);) {
      json j = json::parse(line);
      if (!j.contains("loss")) continue;
      if (j["step"] == 1) first = j["loss"].get<double>();
      last = j["loss"].get<double>();
      if (j["step"] == 5) step5 = j;
    }
    INFO("first " << first << " last " << last);
    CHECK(first > 10.0);
    CHECK(last < first - 2.5);
    REQUIRE(step5.contains("stats"));
    const json& st = step5["stats"];
    CHECK(st.contains("memory.0.top1_score"));
    CHECK(st["memory.0.top1_score"].get<double>() >= st["memory.0.topk_score"].get<double>());
    const double used = st["memory.pool.0.used_fraction"].get<double>();
    CHECK((used > 0 && used <= 1));
    if (cfg.model.mem.tucker()) CHECK(st["memory.0.singular_values"].size() == size_t(cfg.model.mem.head));
    if (cfg.model.mem.tucker_rank_penalty > 0) CHECK(step5["aux_losses"].contains("memory.0.tucker_aux"));
    if (cfg.model.mem.key_balance_reg_coef > 0) CHECK(step5["aux_losses"].contains("memory.0.key_balance"));
  }
}

TEST_CASE("memory models resume bitwise identically, Tucker vectors included (CPU)", "[e2e][memory]") {
  for (std::string file : {"tiny-ultramem-v2.json", "tiny-ultramem-v1.json", "tiny-memory-plus.json"}) {
    INFO(file);
    auto a_cfg = tiny_memory_config(file, scratch_dir("resume-a"), "cpu", 4);
    train::Trainer a(a_cfg, false, true);
    std::vector<double> la, lb;
    for (int i = 0; i < 4; ++i) la.push_back(a.step().loss);
    auto b_cfg = tiny_memory_config(file, scratch_dir("resume-b"), "cpu", 4);
    {
      train::Trainer b(b_cfg, false, true);
      for (int i = 0; i < 2; ++i) lb.push_back(b.step().loss);
      b.save_checkpoint();
    }
    train::Trainer b2(b_cfg, true, true);
    for (int i = 0; i < 2; ++i) lb.push_back(b2.step().loss);
    CHECK(la == lb);
    CHECK(a.params().flat_master().to_doubles() == b2.params().flat_master().to_doubles());
  }
}

TEST_CASE("tiny memory models on the GPU: first loss matches the CPU, resume is bitwise", "[gpu][e2e][memory]") {
  UM_REQUIRE_GPU();
  for (std::string file : {"tiny-ultramem-v2.json", "tiny-ultramem-v1.json", "tiny-memory-plus.json"}) {
    INFO(file);
    auto c = tiny_memory_config(file, scratch_dir("gc"), "cpu", 4);
    train::Trainer cpu(c, false, true);
    const double cl = cpu.step().loss;
    auto g = tiny_memory_config(file, scratch_dir("gg"), "cuda", 4);
    g.train.precision = "fp32";
    train::Trainer gpu(g, false, true);
    const double gl = gpu.step().loss;
    CHECK(std::abs(gl - cl) / cl < 1e-4);
    auto ra = tiny_memory_config(file, scratch_dir("gra"), "cuda", 4), rb = tiny_memory_config(file, scratch_dir("grb"), "cuda", 4);
    train::Trainer a(ra, false, true);
    std::vector<double> la, lb;
    for (int i = 0; i < 4; ++i) la.push_back(a.step().loss);
    {
      train::Trainer b(rb, false, true);
      for (int i = 0; i < 2; ++i) lb.push_back(b.step().loss);
      b.save_checkpoint();
    }
    train::Trainer b2(rb, true, true);
    for (int i = 0; i < 2; ++i) lb.push_back(b2.step().loss);
    CHECK(la == lb);
    CHECK(a.params().flat_master().to_doubles() == b2.params().flat_master().to_doubles());
  }
}
