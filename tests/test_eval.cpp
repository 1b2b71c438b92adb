// ultramem-eval's library path: per-source grouping, bits per byte from a manifest, and parity with
// the trainer's validation.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <unistd.h>

#include "testing.h"
#include "ultramem/data/sources.h"
#include "ultramem/io/checkpoint.h"
#include "ultramem/train/evaluate.h"
#include "ultramem/train/trainer.h"

using namespace um;
namespace fs = std::filesystem;
using json = nlohmann::json;

static const std::string kSample = std::string(ULTRAMEM_SOURCE_DIR) + "/data_tools/sample/";

// A fresh empty directory for this file's tests (testing::fresh_dir, tagged by file).
static std::string scratch_dir(const std::string& name) { return testing::fresh_dir("eval-" + name); }

static train::TrainConfig tiny_config(const std::string& out_dir) {
  json doc = {
      {"model", {{"vocab_size", 50304}, {"valid_vocab", 50257}, {"d_model", 32}, {"n_layers", 1}, {"n_heads", 2},
                 {"max_seq_len", 32}, {"norm", "rmsnorm"}, {"pos_encoding", "rope"}, {"mlp_act", "swiglu"},
                 {"mlp_hidden", 64}, {"bias", false}}},
      {"data", {{"train", kSample + "shakespeare-train.bin"}, {"val", kSample + "shakespeare-val.bin"}, {"seq_len", 32}}},
      {"optim", {{"lr", 3e-3}}},
      {"train", {{"max_steps", 2}, {"micro_batch", 4}, {"global_batch", 4}, {"seed", 5}, {"device", "cpu"},
                 {"val_batches", 3}, {"out_dir", out_dir}}}};
  return train::parse_config(doc);
}

TEST_CASE("source names drop extension and numbering", "[eval]") {
  CHECK(data::source_name("/d/c4-validation-00003.npy") == "c4-validation");
  CHECK(data::source_name("shakespeare-val.bin") == "shakespeare");
  CHECK(data::source_name("x/web-train-00012.bin") == "web");
  CHECK(data::source_name("/d/part-0.u16") == "part");
  CHECK(data::source_name("/d/wiki.u32") == "wiki");
  auto groups = data::group_by_source({"a/web-val-00000.bin", "a/code-val.bin", "a/web-val-00001.bin"});
  REQUIRE(groups.size() == 2);
  CHECK(groups[0].name == "web");
  CHECK(groups[0].files.size() == 2);
  CHECK(groups[1].name == "code");
}

TEST_CASE("eval reports the trainer's validation loss bitwise, per source, with bits per byte", "[eval][e2e]") {
  auto cfg = tiny_config(scratch_dir("run"));
  train::Trainer t(cfg, false, true);
  t.step();
  t.step();
  t.save_checkpoint();
  const double trainer_val = t.validate();

  auto m = train::load_model(io::latest_checkpoint(cfg.train.out_dir), Device::cpu());
  train::EvalOptions opt;
  opt.seq_len = cfg.data.seq_len;
  opt.micro_batch = cfg.train.micro_batch;
  opt.max_tokens = cfg.train.val_batches * cfg.train.micro_batch * cfg.data.seq_len;
  auto rows = train::evaluate_sources(*m->model, {kSample + "shakespeare-val.bin"}, opt, Device::cpu());
  REQUIRE(rows.size() == 1);
  CHECK(rows[0].source == "shakespeare");
  CHECK(rows[0].eval.tokens == opt.max_tokens);
  CHECK(rows[0].eval.loss == trainer_val);  // bitwise: the same weights, windows and code
  CHECK(std::isnan(rows[0].bits_per_byte()));  // no manifest next to the sample

  // Two sources with a tokenizer manifest: rows per source, bits per byte from the split's bytes/token.
  std::string dir = scratch_dir("sources");
  std::vector<uint32_t> web(2000), code(1500);
  for (size_t i = 0; i < web.size(); ++i) web[i] = uint32_t((i * 131 + 7) % 50257);
  for (size_t i = 0; i < code.size(); ++i) code[i] = uint32_t((i * 17 + 3) % 300);
  data::write_shard(dir + "/web-val-00000.bin", web, 50257, 50256, 1);
  data::write_shard(dir + "/web-val-00001.bin", web, 50257, 50256, 1);
  data::write_shard(dir + "/code-val.bin", code, 50257, 50256, 1);
  json manifest = {{"val", {{"tokens", 5500}, {"text_bytes", 22000},  // 4 bytes per token
                            {"shards", {{{"file", "web-val-00000.bin"}, {"tokens", 2000}},
                                        {{"file", "web-val-00001.bin"}, {"tokens", 2000}},
                                        {{"file", "code-val.bin"}, {"tokens", 1500}, {"text_bytes", 3000}}}}}}};
  std::ofstream(dir + "/corpus-manifest.json") << manifest.dump(2);
  opt.max_tokens = 0;
  rows = train::evaluate_sources(*m->model, data::expand_patterns(dir + "/web-*.bin," + dir + "/code-val.bin", "--data"),
                                 opt, Device::cpu());
  REQUIRE(rows.size() == 2);
  CHECK(rows[0].source == "web");
  CHECK(rows[0].files.size() == 2);
  CHECK(rows[0].eval.tokens == 2 * (1999 / 32) / 4 * 4 * 32);  // whole micro-batches of whole windows
  CHECK(rows[1].source == "code");
  const double ln2 = std::log(2.0);
  CHECK(rows[0].bits_per_byte() == Approx(rows[0].eval.loss / (ln2 * 4.0)).epsilon(1e-12));
  CHECK(rows[1].bits_per_byte() == Approx(rows[1].eval.loss / (ln2 * 2.0)).epsilon(1e-12));  // the shard's own bytes
  // Each row is the loss of its files alone.
  data::LoaderOptions lo;
  lo.seq_len = 32;
  lo.shuffle = false;
  data::TokenLoader code_only({dir + "/code-val.bin"}, lo);
  CHECK(rows[1].eval.loss == train::evaluate_loss(*m->model, code_only, 4, 0, Device::cpu()).loss);
  auto total = train::total_result(rows);
  CHECK(total.eval.tokens == rows[0].eval.tokens + rows[1].eval.tokens);
  CHECK(total.eval.loss == Approx((rows[0].eval.loss * double(rows[0].eval.tokens) +
                                   rows[1].eval.loss * double(rows[1].eval.tokens)) / double(total.eval.tokens)));
  CHECK(total.bits_per_byte() ==
        Approx(total.eval.loss * double(total.eval.tokens) / (ln2 * (4.0 * double(rows[0].eval.tokens) +
                                                                      2.0 * double(rows[1].eval.tokens)))));
}
