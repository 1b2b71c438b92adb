// ultramem-eval --checkpoint DIR --data PATTERNS [--seq-len N] [--micro-batch N] [--max-tokens N]
//               [--max-batches N] [--device auto|cpu|cuda] [--out FILE.json]
// Loss, perplexity and (with a tokenizer manifest next to the data) bits per byte of a checkpoint,
// per data source and in total: the same code path as the trainer's validation.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "ultramem/train/evaluate.h"

using json = nlohmann::json;

static void usage() {
  std::puts(
      "usage: ultramem-eval --checkpoint DIR --data PATTERNS [--seq-len N] [--micro-batch N]\n"
      "                     [--max-tokens N] [--max-batches N] [--device auto|cpu|cuda] [--out FILE.json]\n"
      "  Loss, perplexity and bits per byte of a checkpoint over token files (.bin, .npy, .u16, .u32;\n"
      "  comma-separated paths or globs), per source (the file name without -NNNNN/-val/-train) and in total.\n"
      "  --max-tokens N: at most N tokens per source. Bits per byte need a *-manifest.json next to the files.");
}

static std::string fmt(const char* f, double v) {
  if (std::isnan(v)) return "-";
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

static json row_json(const um::train::SourceResult& r) {
  double bpb = r.bits_per_byte();
  return {{"source", r.source}, {"files", r.files}, {"tokens", r.eval.tokens}, {"loss", r.eval.loss},
          {"perplexity", std::exp(r.eval.loss)}, {"bits_per_byte", std::isnan(bpb) ? json(nullptr) : json(bpb)},
          {"text_bytes", r.text_bytes > 0 ? json(r.text_bytes) : json(nullptr)}};
}

int main(int argc, char** argv) {
  std::string ckpt, data, device = "auto", out;
  int64_t seq_len = 0, micro_batch = 8, max_batches = 0, max_tokens = 0;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw um::Error(a, "a value after the flag", "none");
      return argv[++i];
    };
    try {
      if (a == "--checkpoint") ckpt = next();
      else if (a == "--data") data = next();
      else if (a == "--seq-len") seq_len = std::stoll(next());
      else if (a == "--micro-batch") micro_batch = std::stoll(next());
      else if (a == "--max-batches") max_batches = std::stoll(next());
      else if (a == "--max-tokens") max_tokens = std::stoll(next());
      else if (a == "--device") device = next();
      else if (a == "--out") out = next();
      else if (a == "--help" || a == "-h") { usage(); return 0; }
      else { std::fprintf(stderr, "ultramem-eval: unexpected argument \"%s\"\n", a.c_str()); usage(); return 2; }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "ultramem-eval: error: %s\n", e.what());
      return 2;
    }
  }
  if (ckpt.empty() || data.empty() || micro_batch <= 0 || max_tokens < 0 || max_batches < 0) {
    usage();
    return 2;
  }
  try {
    um::Device dev = device == "cpu" ? um::Device::cpu()
                     : (device == "cuda" || um::cuda_available()) ? um::Device::cuda(0) : um::Device::cpu();
    auto m = um::train::load_model(ckpt, dev);
    um::train::EvalOptions opt;
    opt.seq_len = seq_len > 0 ? seq_len : m->config.data.seq_len;
    opt.micro_batch = micro_batch;
    // --max-batches is the older spelling of a token budget in whole micro-batches.
    opt.max_tokens = max_tokens > 0 ? max_tokens : max_batches * micro_batch * opt.seq_len;
    opt.verify_checksum = m->config.data.verify_checksum;
    opt.raw = um::train::raw_token_options(m->config.data);
    auto rows = um::train::evaluate_sources(*m->model, um::data::expand_patterns(data, "--data"), opt, dev);
    auto total = um::train::total_result(rows);
    std::printf("checkpoint %s, seq_len %lld\n\n", ckpt.c_str(), static_cast<long long>(opt.seq_len));
    std::printf("| source | files | tokens | loss | perplexity | bits/byte |\n|---|---|---|---|---|---|\n");
    auto print_row = [](const um::train::SourceResult& r) {
      std::printf("| %s | %zu | %lld | %.4f | %s | %s |\n", r.source.c_str(), r.files.size(),
                  static_cast<long long>(r.eval.tokens), r.eval.loss, fmt("%.3f", std::exp(r.eval.loss)).c_str(),
                  fmt("%.4f", r.bits_per_byte()).c_str());
    };
    for (const auto& r : rows) print_row(r);
    if (rows.size() > 1) print_row(total);
    if (!out.empty()) {
      json sources = json::array();
      for (const auto& r : rows) sources.push_back(row_json(r));
      std::ofstream f(out);
      if (!f) throw um::Error(out, "a writable --out file", "it cannot be opened");
      f << json{{"checkpoint", ckpt}, {"data", data}, {"seq_len", opt.seq_len}, {"micro_batch", micro_batch},
                {"max_tokens", opt.max_tokens}, {"sources", sources}, {"total", row_json(total)}}
               .dump(2)
        << "\n";
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ultramem-eval: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
