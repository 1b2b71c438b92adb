#include "testing.h"
#include "ultramem/config/json_reader.h"
#include "ultramem/optim/schedule.h"
#include "ultramem/train/config.h"

using namespace um;
using json = nlohmann::json;

static json minimal() { return json::parse(R"({"data": {"train": "x.bin", "seq_len": 64}, "model": {"max_seq_len": 64}})"); }

static void expect_config_error(const json& doc, const std::string& key, const std::string& needle) {
  try {
    train::parse_config(doc);
    FAIL("no error for " << doc.dump());
  } catch (const Error& e) {
    INFO(e.what());
    CHECK(e.where() == key);
    CHECK(std::string(e.what()).find(needle) != std::string::npos);
  }
}

TEST_CASE("config: defaults, round trip through the resolved JSON", "[config]") {
  train::TrainConfig c = train::parse_config(minimal());
  CHECK(c.model.d_model == 768);
  CHECK(c.data.seq_len == 64);
  json resolved = train::to_json(c);
  train::TrainConfig c2 = train::parse_config(resolved);
  CHECK(train::to_json(c2) == resolved);
}

TEST_CASE("config: each class of mistake names its key", "[config]") {
  json d = minimal();
  d["model"]["d_modle"] = 5;
  expect_config_error(d, "model.d_modle", "unknown key");
  d = minimal();
  d["optim"]["lr"] = "fast";
  expect_config_error(d, "optim.lr", "a number");
  d = minimal();
  d["train"]["max_steps"] = -3;
  expect_config_error(d, "train.max_steps", "[1,");
  d = minimal();
  d["model"]["norm"] = "batchnorm";
  expect_config_error(d, "model.norm", "\"layernorm\"");
  d = minimal();
  d["model"]["n_heads"] = 5;
  expect_config_error(d, "model.d_model", "multiple of model.n_heads");
  d = minimal();
  d["train"]["global_batch"] = 12;
  d["train"]["micro_batch"] = 8;
  expect_config_error(d, "train.global_batch", "multiple");
  d = minimal();
  d["data"].erase("train");
  expect_config_error(d, "data.train", "shards");
  d = minimal();
  d["model"] = 3;
  expect_config_error(d, "model", "JSON object");
  d = minimal();
  d["data"]["seq_len"] = 128;
  expect_config_error(d, "data.seq_len", "max_seq_len");
  d = minimal();
  d["model"]["ffn"] = "nonsense";  // accepted by the parser; rejected by the registry when the model is built
  CHECK_NOTHROW(train::parse_config(d));
}

TEST_CASE("config: --set overrides", "[config]") {
  json d = minimal();
  config::apply_override(d, "train.max_steps=17");
  config::apply_override(d, "optim.schedule=linear");
  config::apply_override(d, "model.bias=false");
  train::TrainConfig c = train::parse_config(d);
  CHECK(c.train.max_steps == 17);
  CHECK(c.optim.schedule == "linear");
  CHECK_FALSE(c.model.bias);
  CHECK_THROWS_AS(config::apply_override(d, "novalue"), Error);
  CHECK_THROWS_AS(config::apply_override(d, "train..x=1"), Error);
}

TEST_CASE("schedule: warmup, cosine to the end ratio", "[config][schedule]") {
  optim::Schedule s{1.0, 10, 110, 0.1, "cosine"};
  CHECK(s.lr(0) == Approx(0.1));
  CHECK(s.lr(9) == Approx(1.0));
  CHECK(s.lr(10) == Approx(1.0));
  CHECK(s.lr(60) == Approx(0.55));
  CHECK(s.lr(110) == Approx(0.1));
  CHECK(s.lr(500) == Approx(0.1));
  optim::Schedule l{2.0, 0, 100, 0.0, "linear"};
  CHECK(l.lr(50) == Approx(1.0));
  optim::Schedule k{2.0, 0, 100, 0.0, "constant"};
  CHECK(k.lr(99) == Approx(2.0));
}
