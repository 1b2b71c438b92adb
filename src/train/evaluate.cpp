#include "ultramem/train/evaluate.h"

#include <cmath>
#include <fstream>
#include <vector>

#include "ultramem/core/arena.h"
#include "ultramem/data/sources.h"
#include "ultramem/io/checkpoint.h"

namespace um::train {

EvalResult evaluate_loss(nn::Transformer& model, data::TokenLoader& loader, int64_t micro_batch, int64_t max_batches,
                         Device device) {
  const int64_t available = int64_t(loader.windows_per_epoch()) / micro_batch;
  const int64_t batches = max_batches > 0 ? std::min(max_batches, available) : available;
  UM_CHECK(batches > 0, detail::concat("evaluation data with at least ", micro_batch, " windows"),
           loader.windows_per_epoch(), " windows");
  int64_t seq = 0;
  EvalResult r;
  std::vector<int32_t> ids, targets;
  Tensor d_ids, d_targets;
  double sum = 0;
  for (int64_t b = 0; b < batches; ++b) {
    if (!d_ids.defined()) {
      // The loader's window length decides the shape.
      seq = int64_t(loader.seq_len());
      ids.resize(size_t(micro_batch * seq));
      targets.resize(size_t(micro_batch * seq));
      d_ids = Tensor::empty({micro_batch, seq}, DType::i32, device);
      d_targets = Tensor::empty({micro_batch, seq}, DType::i32, device);
    }
    loader.next_batch(micro_batch, ids.data(), targets.data());
    copy_bytes(d_ids.data(), device, ids.data(), Device::cpu(), ids.size() * 4);
    copy_bytes(d_targets.data(), device, targets.data(), Device::cpu(), targets.size() * 4);
    nn::StepContext ctx;
    ctx.training = false;
    model.loss(d_ids, d_targets, ctx);  // no tape active: nothing is recorded
    sum += ctx.ce_loss.to_doubles()[0];   // the cross-entropy, without auxiliary losses
    arena_for(device).reset();
  }
  r.batches = batches;
  r.tokens = batches * micro_batch * seq;
  r.loss = sum / double(batches);  // every batch has the same token count
  return r;
}

double SourceResult::bits_per_byte() const {
  if (!(text_bytes > 0)) return NAN;
  return eval.loss * double(eval.tokens) / (std::log(2.0) * text_bytes);
}

std::vector<SourceResult> evaluate_sources(nn::Transformer& model, const std::vector<std::string>& files,
                                           const EvalOptions& opt, Device device) {
  data::LoaderOptions lo;
  lo.seq_len = opt.seq_len;
  lo.shuffle = false;  // the leading windows in file order, as Trainer::validate()
  lo.verify_checksum = opt.verify_checksum;
  lo.raw = opt.raw;
  const int64_t tokens_per_batch = opt.micro_batch * opt.seq_len;
  const int64_t max_batches = opt.max_tokens > 0 ? std::max<int64_t>(1, opt.max_tokens / tokens_per_batch) : 0;
  std::vector<SourceResult> rows;
  for (const data::SourceFiles& group : data::group_by_source(files)) {
    SourceResult row;
    row.source = group.name;
    row.files = group.files;
    data::TokenLoader loader(group.files, lo);
    row.eval = evaluate_loss(model, loader, opt.micro_batch, max_batches, device);
    // Bytes per token of the source: its files' ratios weighted by their token counts. Windows are
    // read in file order, so a partial evaluation mostly covers the first files; the weighted ratio is
    // the estimate that needs no per-window byte counts.
    double bytes = 0, tokens = 0;
    bool known = true;
    for (const std::string& f : group.files) {
      double ratio = data::manifest_bytes_per_token(f);
      known = known && ratio > 0;
      double n = double(data::open_token_source(f, false, opt.raw)->size());
      bytes += ratio * n;
      tokens += n;
    }
    if (known && tokens > 0) row.text_bytes = bytes / tokens * double(row.eval.tokens);
    rows.push_back(row);
  }
  return rows;
}

SourceResult total_result(const std::vector<SourceResult>& rows) {
  SourceResult t;
  t.source = "total";
  double weighted = 0;
  bool known = true;
  for (const SourceResult& r : rows) {
    t.files.insert(t.files.end(), r.files.begin(), r.files.end());
    t.eval.tokens += r.eval.tokens;
    t.eval.batches += r.eval.batches;
    weighted += r.eval.loss * double(r.eval.tokens);
    t.text_bytes += r.text_bytes;
    known = known && r.text_bytes > 0;
  }
  t.eval.loss = t.eval.tokens > 0 ? weighted / double(t.eval.tokens) : 0;
  if (!known) t.text_bytes = 0;
  return t;
}

std::unique_ptr<LoadedModel> load_model(const std::string& checkpoint_dir, Device device) {
  const std::string state_path = checkpoint_dir + "/trainer.json";
  std::ifstream in(state_path);
  if (!in) throw Error(state_path, "a checkpoint directory with trainer.json", "it cannot be opened");
  nlohmann::json st;
  try {
    st = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw Error(state_path, "valid JSON", e.what());
  }
  if (!st.contains("config")) throw Error(state_path, "the run's config under \"config\"", "none");
  auto m = std::make_unique<LoadedModel>();
  m->config = parse_config(st["config"]);
  m->model = std::make_unique<nn::Transformer>(m->config.model, m->params);
  m->params.finalize(device, device.is_cuda() ? DType::bf16 : DType::f32, m->config.train.seed);
  io::load_checkpoint(checkpoint_dir, m->params, nullptr);
  return m;
}

}  // namespace um::train
