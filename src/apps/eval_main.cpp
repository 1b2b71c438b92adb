// ultramem-eval --checkpoint DIR --data PATTERN [--seq-len N] [--micro-batch N] [--max-batches N]
//               [--device auto|cpu|cuda] [--out FILE.json]
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "ultramem/io/checkpoint.h"
#include "ultramem/train/config.h"
#include "ultramem/train/evaluate.h"

using json = nlohmann::json;

static void usage() {
  std::puts(
      "usage: ultramem-eval --checkpoint DIR --data PATTERN [--seq-len N] [--micro-batch N]\n"
      "                     [--max-batches N] [--device auto|cpu|cuda] [--out FILE.json]\n"
      "  Loss and perplexity of a checkpoint over token shards (comma-separated paths or globs).");
}

int main(int argc, char** argv) {
  std::string ckpt, data, device = "auto", out;
  int64_t seq_len = 0, micro_batch = 8, max_batches = 0;
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
      else if (a == "--device") device = next();
      else if (a == "--out") out = next();
      else if (a == "--help" || a == "-h") { usage(); return 0; }
      else { std::fprintf(stderr, "ultramem-eval: unexpected argument \"%s\"\n", a.c_str()); usage(); return 2; }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "ultramem-eval: error: %s\n", e.what());
      return 2;
    }
  }
  if (ckpt.empty() || data.empty()) {
    usage();
    return 2;
  }
  try {
    std::ifstream in(ckpt + "/trainer.json");
    if (!in) throw um::Error(ckpt + "/trainer.json", "a checkpoint directory with trainer.json", "it cannot be opened");
    json st = json::parse(in);
    um::train::TrainConfig cfg = um::train::parse_config(st.at("config"));
    if (seq_len <= 0) seq_len = cfg.data.seq_len;
    um::Device dev = device == "cpu" ? um::Device::cpu()
                     : (device == "cuda" || um::cuda_available()) ? um::Device::cuda(0) : um::Device::cpu();
    um::nn::ParameterStore ps;
    um::nn::Transformer model(cfg.model, ps);
    ps.finalize(dev, dev.is_cuda() ? um::DType::bf16 : um::DType::f32, cfg.train.seed);
    um::io::load_checkpoint(ckpt, ps, nullptr);
    um::data::LoaderOptions lo;
    lo.seq_len = seq_len;
    lo.shuffle = false;
    um::data::TokenLoader loader(um::data::expand_patterns(data, "--data"), lo);
    auto r = um::train::evaluate_loss(model, loader, micro_batch, max_batches, dev);
    std::printf("| checkpoint | data | tokens | loss | perplexity |\n|---|---|---|---|---|\n");
    std::printf("| %s | %s | %lld | %.4f | %.3f |\n", ckpt.c_str(), data.c_str(), static_cast<long long>(r.tokens), r.loss,
                std::exp(r.loss));
    if (!out.empty()) {
      std::ofstream f(out);
      f << json{{"checkpoint", ckpt}, {"data", data}, {"tokens", r.tokens}, {"loss", r.loss}, {"perplexity", std::exp(r.loss)}}
               .dump(2)
        << "\n";
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ultramem-eval: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
