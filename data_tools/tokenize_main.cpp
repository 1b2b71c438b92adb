// ultramem-tokenize: corpus files (JSON Lines or text, optionally gzip/zstd) -> token shards + manifest.
//   ultramem-tokenize --tokenizer data_tools/tokenizers/gpt2 --out-dir data/c4 --prefix c4
//                     --val-fraction 0.01 'c4/en/c4-train.*.json.gz'
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "data_tools/corpus/tokenize_corpus.h"
#include "data_tools/tokenizer/thread_pool.h"
#include "ultramem/core/check.h"
#include "ultramem/data/shard.h"

namespace {

constexpr int kMaxWarningsShown = 20;

const char* kUsage = R"(usage: ultramem-tokenize --tokenizer PATH --out-dir DIR [options] INPUT...

INPUT: files or glob patterns (quote them) of .jsonl, .json (JSON Lines, like C4's .json.gz) or .txt
(a whole file is one document), each optionally compressed: .gz or .zst.

  --tokenizer PATH     a Hugging Face tokenizer.json, or a directory with tokenizer.json or with
                       GPT-2's encoder.json + vocab.bpe (e.g. data_tools/tokenizers/gpt2)
  --out-dir DIR        where PREFIX-train-00000.bin ... and PREFIX-manifest.json go
  --prefix NAME        shard name prefix (default: corpus)
  --field NAME         JSON field with the document text (default: text)
  --shard-tokens N     tokens per shard at most, whole documents (default: 100M; k, M, G suffixes)
  --val-fraction F     share of documents for PREFIX-val-*.bin, split by hash of (file name, line)
                       (default: 0)
  --on-error MODE      malformed line (bad JSON, no string field, invalid UTF-8): fail (default),
                       or skip it with a warning naming FILE:LINE
  --threads N          tokenizing threads (default: all hardware threads)
  --allow-special      "<|endoftext|>" inside a document becomes the special token (default: plain text)
  --eos ID             end-of-document id (default: the tokenizer's "<|endoftext|>")
  --overwrite          replace an earlier output with the same prefix in DIR (default: refuse)
  --quiet              no progress line
)";

[[noreturn]] void usage_error(const std::string& message) {
  std::fprintf(stderr, "ultramem-tokenize: %s\n\n%s", message.c_str(), kUsage);
  std::exit(2);
}

uint64_t parse_count(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  double value = std::strtod(text.c_str(), &end);
  std::string suffix = end ? end : "";
  double scale = suffix.empty() ? 1 : suffix == "k" || suffix == "K" ? 1e3 : suffix == "M" ? 1e6 : suffix == "G" ? 1e9 : 0;
  if (end == text.c_str() || scale == 0 || value <= 0) usage_error(flag + " expects a positive count, got \"" + text + "\"");
  return uint64_t(value * scale);
}

struct ProgressLine {
  bool enabled = false;
  std::chrono::steady_clock::time_point last{};
  bool shown = false;

  void clear() {
    if (shown) std::fprintf(stderr, "\r\033[K");
    shown = false;
  }
  void show(const um::tok::TokenizeProgress& p, bool force) {
    if (!enabled) return;
    auto now = std::chrono::steady_clock::now();
    if (!force && now - last < std::chrono::milliseconds(250)) return;
    last = now;
    double mb = double(p.text_bytes) / 1e6;
    std::fprintf(stderr, "\r\033[Kfiles %zu/%zu  %llu docs  %.1fM tokens  %.1f MB  %.2f MB/s", p.files_done,
                 p.files_total, static_cast<unsigned long long>(p.documents), double(p.tokens) / 1e6, mb,
                 p.seconds > 0 ? mb / p.seconds : 0.0);
    std::fflush(stderr);
    shown = true;
  }
};

}  // namespace

int main(int argc, char** argv) {
  um::tok::TokenizeOptions opt;
  opt.threads = um::tok::ThreadPool::hardware_threads();
  bool quiet = false;
  std::vector<std::string> patterns;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage_error(a + " needs a value");
      return argv[++i];
    };
    if (a == "-h" || a == "--help") {
      std::printf("%s", kUsage);
      return 0;
    } else if (a == "--tokenizer") {
      opt.tokenizer_path = value();
    } else if (a == "--out-dir") {
      opt.out_dir = value();
    } else if (a == "--prefix") {
      opt.prefix = value();
    } else if (a == "--field") {
      opt.field = value();
    } else if (a == "--shard-tokens") {
      opt.shard_tokens = parse_count(a, value());
    } else if (a == "--val-fraction") {
      std::string v = value();
      char* end = nullptr;
      opt.val_fraction = std::strtod(v.c_str(), &end);
      if (end == v.c_str() || *end || opt.val_fraction < 0 || opt.val_fraction > 1)
        usage_error("--val-fraction expects a number in [0, 1], got \"" + v + "\"");
    } else if (a == "--on-error") {
      std::string v = value();
      if (v != "skip" && v != "fail") usage_error("--on-error expects skip or fail, got \"" + v + "\"");
      opt.skip_malformed = v == "skip";
    } else if (a == "--threads") {
      opt.threads = int(parse_count(a, value()));
    } else if (a == "--eos") {
      std::string v = value();
      char* end = nullptr;
      unsigned long id = std::strtoul(v.c_str(), &end, 10);
      if (end == v.c_str() || *end || id > UINT32_MAX) usage_error("--eos expects a token id, got \"" + v + "\"");
      opt.eos_id = uint32_t(id);
    } else if (a == "--allow-special") {
      opt.allow_special = true;
    } else if (a == "--overwrite") {
      opt.overwrite = true;
    } else if (a == "--quiet") {
      quiet = true;
    } else if (a.rfind("--", 0) == 0) {
      usage_error("unknown option " + a);
    } else {
      patterns.push_back(a);
    }
  }
  if (opt.tokenizer_path.empty()) usage_error("--tokenizer is required");
  if (patterns.empty()) usage_error("no input files");

  ProgressLine line;
  line.enabled = !quiet && ::isatty(STDERR_FILENO);
  int warnings = 0;
  um::tok::TokenizeCallbacks callbacks;
  callbacks.progress = [&](const um::tok::TokenizeProgress& p) { line.show(p, false); };
  callbacks.warning = [&](const std::string& message) {
    if (++warnings > kMaxWarningsShown) return;
    line.clear();
    std::fprintf(stderr, "warning: %s%s\n", message.c_str(),
                 warnings == kMaxWarningsShown ? " (further warnings are only counted)" : "");
  };
  try {
    for (const std::string& p : patterns) {
      std::vector<std::string> files = um::data::expand_patterns(p, "input");
      opt.inputs.insert(opt.inputs.end(), files.begin(), files.end());
    }
    um::tok::Tokenizer tokenizer = um::tok::Tokenizer::load(opt.tokenizer_path);
    um::tok::TokenizeSummary s = um::tok::tokenize_corpus(tokenizer, opt, callbacks);
    line.clear();
    auto print_split = [](const char* name, const um::tok::SplitStats& split) {
      std::printf("%-5s %10llu documents %13llu tokens %4zu shards\n", name,
                  static_cast<unsigned long long>(split.documents), static_cast<unsigned long long>(split.tokens),
                  split.shards.size());
    };
    print_split("train", s.train);
    print_split("val", s.val);
    if (s.malformed_lines) std::printf("skipped %llu malformed lines\n", static_cast<unsigned long long>(s.malformed_lines));
    double mb = double(s.train.text_bytes + s.val.text_bytes) / 1e6;
    std::printf("%.1f MB of text in %.1f s (%.2f MB/s, %d threads); vocab %u, eos %u\nmanifest %s\n", mb, s.seconds,
                s.seconds > 0 ? mb / s.seconds : 0.0, opt.threads, s.vocab_size, s.eos_id, s.manifest_path.c_str());
    return 0;
  } catch (const std::exception& e) {
    line.clear();
    std::fprintf(stderr, "ultramem-tokenize: error: %s\n", e.what());
    return 1;
  }
}
