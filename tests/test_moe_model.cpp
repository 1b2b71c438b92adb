// MoE configs and models: the config keys and their errors, active FLOPs against the dense backbone, and a
// tiny MoE model training on the CPU and matching it on the GPU ([e2e]). The layer and its ops:
// test_moe.cpp.
#include <filesystem>
#include <fstream>
#include <map>

#include "testing.h"
#include "ultramem/nn/transformer.h"
#include "ultramem/train/trainer.h"

using namespace um;
using namespace um::testing;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// A fresh empty directory for this file's tests (testing::fresh_dir, tagged by file).
static std::string scratch_dir(const std::string& name) { return testing::fresh_dir("moe-" + name); }

double model_flops(const json& doc) {
  train::TrainConfig c = train::parse_config(doc);
  nn::ParameterStore ps;
  nn::Transformer t(c.model, ps);  // declares parameters only (nothing allocated before finalize)
  return t.flops_per_token(c.data.seq_len);
}

}  // namespace

TEST_CASE("moe configs: keys round-trip, errors name the key, active FLOPs match the dense backbone", "[moe][config]") {
  for (std::string f : {"tiny-moe.json", "moe-top2-of-8.json", "olmoe-top8-of-64.json"}) {
    INFO(f);
    json doc = testing::read_config(f);
    train::TrainConfig c = train::parse_config(doc);
    CHECK(c.model.ffn == "moe");
    json back = train::to_json(c);
    CHECK(back["model"]["moe_num_experts"] == c.model.moe_num_experts);
    CHECK(train::to_json(train::parse_config(back)) == back);
  }
  json bad = testing::read_config("tiny-moe.json");
  bad["model"]["moe_topk"] = 2;
  CHECK_THROWS_WITH(train::parse_config(bad), Catch::Contains("model.moe_topk"));
  bad = testing::read_config("tiny-moe.json");
  bad["model"]["moe_top_k"] = bad["model"]["moe_num_experts"].get<int>() + 1;
  CHECK_THROWS_WITH(train::parse_config(bad), Catch::Contains("model.moe_top_k"));
  // Both large MoE configs have the active matmul FLOPs of configs/dense-227m.json (d 768, 20 layers,
  // SwiGLU 3264: the UltraMemV2-227M backbone plus its memory layers' compute), up to the router's d x E.
  json dense = testing::read_config("olmoe-top8-of-64.json");
  dense["model"]["ffn"] = "mlp";
  dense["model"]["mlp_hidden"] = testing::read_config("dense-227m.json")["model"]["mlp_hidden"];
  const double dense_flops = model_flops(dense);
  for (std::string f : {"moe-top2-of-8.json", "olmoe-top8-of-64.json"}) {
    const double moe = model_flops(testing::read_config(f));
    INFO(f << " moe " << moe << " dense " << dense_flops);
    CHECK(moe >= dense_flops);
    CHECK(moe < dense_flops * 1.005);
  }
}

TEST_CASE("tiny MoE model: loss falls on real text, aux losses and expert counts logged (CPU)", "[e2e][moe]") {
  json d = testing::read_config("tiny-moe.json");
  const std::string sample = std::string(ULTRAMEM_SOURCE_DIR) + "/data_tools/sample/";
  d["data"] = {{"train", sample + "shakespeare-train.bin"}, {"val", sample + "shakespeare-val.bin"}, {"seq_len", 64}};
  d["model"]["d_model"] = 64;
  d["model"]["n_layers"] = 2;
  d["model"]["moe_hidden"] = 128;
  d["optim"]["warmup_steps"] = 3;
  d["train"] = {{"max_steps", 30}, {"micro_batch", 4}, {"global_batch", 8}, {"seed", 3}, {"device", "cpu"},
                {"val_batches", 2}, {"log_every", 5}, {"checkpoint_every", 0}, {"out_dir", scratch_dir("loss")},
                {"keep_last", 2}};
  train::TrainConfig cfg = train::parse_config(d);
  train::Trainer t(cfg, false, true);
  t.run(30);
  std::ifstream in(fs::path(cfg.train.out_dir) / "metrics.jsonl");
  std::map<int64_t, json> steps;
  for (std::string line; std::getline(in, line);) {
    json j = json::parse(line);
    if (j.contains("loss")) steps[j["step"].get<int64_t>()] = j;
  }
  REQUIRE(steps.size() == 30);
  const double first = steps[1]["loss"].get<double>(), last = steps[30]["loss"].get<double>();
  INFO("first " << first << " last " << last);
  CHECK(first > 10.0);
  CHECK(last < first - 3.0);
  // Every step logs the weighted aux losses by name; logged steps (1, 5, 10, ...) the expert counts.
  const json& aux = steps[2]["aux_losses"];
  CHECK(aux.contains("blocks.0.moe.balance"));
  CHECK(aux.contains("blocks.1.moe.zloss"));
  const double balance = aux["blocks.1.moe.balance"].get<double>();
  CHECK((balance > 0 && balance < cfg.model.moe_loss_weight * double(cfg.model.moe_num_experts)));
  CHECK_FALSE(steps[2].contains("stats"));
  REQUIRE(steps[5].contains("stats"));
  const json& counts = steps[5]["stats"]["blocks.0.moe.tokens_per_expert"];
  REQUIRE(counts.size() == size_t(cfg.model.moe_num_experts));
  int64_t total = 0;
  for (const auto& c : counts) total += c.get<int64_t>();
  CHECK(total == cfg.train.micro_batch * cfg.data.seq_len * cfg.model.moe_top_k);
  CHECK(std::isfinite(t.validate()));
}

TEST_CASE("tiny MoE model on the GPU: first loss matches the CPU", "[gpu][e2e][moe]") {
  UM_REQUIRE_GPU();
  json d = testing::read_config("tiny-moe.json");
  const std::string sample = std::string(ULTRAMEM_SOURCE_DIR) + "/data_tools/sample/";
  d["data"] = {{"train", sample + "shakespeare-train.bin"}, {"val", ""}, {"seq_len", 64}};
  d["train"] = {{"max_steps", 4}, {"micro_batch", 4}, {"seed", 3}, {"device", "cpu"}, {"out_dir", scratch_dir("gpu-cpu")}};
  train::Trainer cpu(train::parse_config(d), false, true);
  const double cpu_loss = cpu.step().loss;
  for (std::string prec : {"fp32", "bf16"}) {
    d["train"]["device"] = "cuda";
    d["train"]["precision"] = prec;
    d["train"]["out_dir"] = scratch_dir("gpu-" + prec);
    train::Trainer g(train::parse_config(d), false, true);
    const double gl = g.step().loss;
    INFO(prec << " gpu " << gl << " cpu " << cpu_loss);
    CHECK(std::abs(gl - cpu_loss) / cpu_loss < (prec == "fp32" ? 1e-4 : 1e-2));
    for (int i = 0; i < 3; ++i) CHECK(std::isfinite(g.step().loss));
  }
}
