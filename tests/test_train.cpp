// End-to-end: the trainer on the bundled real-text sample.
#include <filesystem>
#include <fstream>
#include <unistd.h>

#include "testing.h"
#include "ultramem/io/safetensors.h"
#include "ultramem/train/trainer.h"

using namespace um;
namespace fs = std::filesystem;
using json = nlohmann::json;

static const std::string kSample = std::string(ULTRAMEM_SOURCE_DIR) + "/data_tools/sample/";

// A fresh empty directory for this file's tests (testing::fresh_dir, tagged by file).
static std::string scratch_dir(const std::string& name) { return testing::fresh_dir("e2e-" + name); }

// A model small enough for a CPU test, on real text.
static train::TrainConfig tiny_config(const std::string& out_dir, const std::string& device) {
  json doc = {
      {"model", {{"vocab_size", 50304}, {"valid_vocab", 50257}, {"d_model", 64}, {"n_layers", 2}, {"n_heads", 4},
                 {"max_seq_len", 64}, {"norm", "rmsnorm"}, {"pos_encoding", "rope"}, {"mlp_act", "swiglu"},
                 {"mlp_hidden", 128}, {"bias", false}}},
      {"data", {{"train", kSample + "shakespeare-train.bin"}, {"val", kSample + "shakespeare-val.bin"}, {"seq_len", 64}}},
      {"optim", {{"lr", 3e-3}, {"warmup_steps", 3}}},
      {"train", {{"max_steps", 30}, {"micro_batch", 4}, {"global_batch", 8}, {"seed", 3}, {"device", device},
                 {"val_batches", 2}, {"out_dir", out_dir}, {"keep_last", 5}}}};
  return train::parse_config(doc);
}

static std::vector<double> master_weights(train::Trainer& t) { return t.params().flat_master().to_doubles(); }

TEST_CASE("tiny model: training loss falls clearly on real text (CPU)", "[e2e]") {
  auto cfg = tiny_config(scratch_dir("loss"), "cpu");
  train::Trainer t(cfg, false, true);
  double first = t.step().loss;
  double last = 0;
  // After the first steps sized the arena, a training step allocates nothing.
  size_t allocations = 0;
  for (int i = 1; i < 30; ++i) {
    last = t.step().loss;
    if (i == 2) allocations = arena_for(Device::cpu()).allocation_count();
  }
  CHECK(arena_for(Device::cpu()).allocation_count() == allocations);
  INFO("first " << first << " last " << last);
  CHECK(first > 10.0);         // ~ln(50257) = 10.8 at initialisation
  CHECK(last < first - 3.0);  // unigram statistics alone take it far below
  double val = t.validate();
  CHECK(std::isfinite(val));
  CHECK(val < first - 2.5);
}

TEST_CASE("resume is bitwise identical to an uninterrupted run (CPU)", "[e2e]") {
  auto run_a = tiny_config(scratch_dir("resume-a"), "cpu");
  run_a.train.max_steps = 6;
  train::Trainer a(run_a, false, true);
  std::vector<double> losses_a;
  for (int i = 0; i < 6; ++i) losses_a.push_back(a.step().loss);

  auto run_b = tiny_config(scratch_dir("resume-b"), "cpu");
  run_b.train.max_steps = 6;
  std::vector<double> losses_b;
  {
    train::Trainer b(run_b, false, true);
    for (int i = 0; i < 3; ++i) losses_b.push_back(b.step().loss);
    b.save_checkpoint();
  }
  train::Trainer b2(run_b, true, true);
  CHECK(b2.completed_steps() == 3);
  for (int i = 0; i < 3; ++i) losses_b.push_back(b2.step().loss);
  CHECK(losses_a == losses_b);
  CHECK(master_weights(a) == master_weights(b2));
}

TEST_CASE("trainer errors name what is wrong", "[e2e]") {
  auto cfg = tiny_config(scratch_dir("errors"), "cpu");
  SECTION("missing shard") {
    cfg.data.train = "/nonexistent/shard.bin";
    CHECK_THROWS_WITH(train::Trainer(cfg, false, true), Catch::Contains("data.train"));
  }
  SECTION("unknown feed-forward type") {
    cfg.model.ffn = "moe-not-yet";
    CHECK_THROWS_WITH(train::Trainer(cfg, false, true), Catch::Contains("model.ffn") && Catch::Contains("mlp"));
  }
  SECTION("resume without a checkpoint") {
    CHECK_THROWS_WITH(train::Trainer(cfg, true, true), Catch::Contains("checkpoint"));
  }
  SECTION("checkpoint of another model shape") {
    cfg.train.max_steps = 1;
    {
      train::Trainer t(cfg, false, true);
      t.step();
      t.save_checkpoint();
    }
    auto other = cfg;
    other.model.d_model = 32;
    CHECK_THROWS_WITH(train::Trainer(other, true, true), Catch::Contains("model.safetensors") && Catch::Contains("[50304,32]"));
  }
  SECTION("vocabulary larger than the model's") {
    cfg.model.valid_vocab = 1000;
    CHECK_THROWS_WITH(train::Trainer(cfg, false, true), Catch::Contains("vocabulary"));
  }
}

TEST_CASE("GPU training matches the CPU reference and resumes bitwise", "[gpu][e2e]") {
  UM_REQUIRE_GPU();
  // Same initial weights and data: the first step's loss must agree (f32 tightly, bf16 loosely).
  auto cpu_cfg = tiny_config(scratch_dir("gpu-cpu"), "cpu");
  train::Trainer cpu(cpu_cfg, false, true);
  double cpu_loss = cpu.step().loss;
  for (std::string prec : {"fp32", "bf16"}) {
    auto gcfg = tiny_config(scratch_dir("gpu-" + prec), "cuda");
    gcfg.train.precision = prec;
    train::Trainer g(gcfg, false, true);
    double gl = g.step().loss;
    INFO(prec << " gpu " << gl << " cpu " << cpu_loss);
    CHECK(std::abs(gl - cpu_loss) / cpu_loss < (prec == "fp32" ? 1e-4 : 1e-2));
    if (prec == "fp32") {
      // After one optimizer step the weights still agree closely.
      CHECK(testing::rel_error(g.params().flat_master().to_doubles(), cpu.params().flat_master().to_doubles()) < 1e-3);
    }
  }
  // Resume on the GPU: bitwise (deterministic kernels).
  auto ra = tiny_config(scratch_dir("gpu-ra"), "cuda");
  ra.train.max_steps = 6;
  train::Trainer a(ra, false, true);
  std::vector<double> la, lb;
  for (int i = 0; i < 6; ++i) la.push_back(a.step().loss);
  auto rb = tiny_config(scratch_dir("gpu-rb"), "cuda");
  rb.train.max_steps = 6;
  {
    train::Trainer b(rb, false, true);
    for (int i = 0; i < 3; ++i) lb.push_back(b.step().loss);
    b.save_checkpoint();
  }
  train::Trainer b2(rb, true, true);
  for (int i = 0; i < 3; ++i) lb.push_back(b2.step().loss);
  CHECK(la == lb);
  CHECK(master_weights(a) == master_weights(b2));
}
