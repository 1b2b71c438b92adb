// The run's manifest, and the check for (or removal of) an earlier run's output.
#include <filesystem>
#include <nlohmann/json.hpp>

#include "data_tools/corpus/sha256.h"
#include "data_tools/corpus/tokenize_corpus.h"
#include "src/io/atomic_file.h"
#include "ultramem/core/check.h"

namespace um::tok {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

std::string manifest_path(const std::string& out_dir, const std::string& prefix) {
  return (fs::path(out_dir) / (prefix + "-manifest.json")).string();
}

static bool is_previous_output(const std::string& name, const std::string& prefix) {
  auto starts = [&](const std::string& p) { return name.rfind(p, 0) == 0; };
  auto ends = [&](const std::string& s) { return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0; };
  if (name == prefix + "-manifest.json" || name == prefix + "-manifest.json.tmp") return true;
  return (starts(prefix + "-train-") || starts(prefix + "-val-")) && (ends(".bin") || ends(".bin.tmp"));
}

void clear_previous_output(const std::string& out_dir, const std::string& prefix, bool remove) {
  if (!fs::is_directory(out_dir)) return;
  for (const auto& entry : fs::directory_iterator(out_dir)) {
    std::string name = entry.path().filename().string();
    if (!is_previous_output(name, prefix)) continue;
    if (!remove)
      throw Error(out_dir, "no earlier output with prefix \"" + prefix + "\" (--overwrite replaces it)", name);
    fs::remove(entry.path());
  }
}

static json split_json(const SplitStats& s) {
  json shards = json::array();
  for (const ShardInfo& info : s.shards)
    shards.push_back({{"file", fs::path(info.path).filename().string()}, {"tokens", info.tokens}, {"documents", info.documents}});
  return {{"documents", s.documents}, {"tokens", s.tokens}, {"text_bytes", s.text_bytes}, {"shards", shards}};
}

void write_manifest(const Tokenizer& tokenizer, const TokenizeOptions& options, const TokenizeSummary& summary) {
  json files = json::array();
  for (const std::string& f : tokenizer.source_files()) files.push_back({{"path", f}, {"sha256", sha256_file_hex(f)}});
  json sources = json::array();
  for (const SourceStats& s : summary.sources)
    sources.push_back({{"path", s.path}, {"documents", s.documents}, {"train_documents", s.train_documents},
                       {"val_documents", s.val_documents}, {"tokens", s.tokens}, {"text_bytes", s.text_bytes},
                       {"malformed_lines", s.malformed_lines}});
  json manifest = {
      {"format", "ultramem token shards v1 (docs/data-format.md)"},
      {"tokenizer",
       {{"path", options.tokenizer_path}, {"kind", tokenizer.kind()}, {"files", files},
        {"vocab_size", summary.vocab_size}, {"eos_id", summary.eos_id}}},
      {"options",
       {{"field", options.field}, {"shard_tokens", options.shard_tokens}, {"val_fraction", options.val_fraction},
        {"on_error", options.skip_malformed ? "skip" : "fail"}, {"allow_special", options.allow_special},
        {"split", "val when splitmix64_finalizer(fnv1a64(file name) + line * 0x9E3779B97F4A7C15) / 2^64 < val_fraction"}}},
      {"documents", summary.train.documents + summary.val.documents},
      {"tokens", summary.train.tokens + summary.val.tokens},
      {"text_bytes", summary.train.text_bytes + summary.val.text_bytes},
      {"malformed_lines", summary.malformed_lines},
      {"train", split_json(summary.train)},
      {"val", split_json(summary.val)},
      {"sources", sources},
  };
  std::string text = manifest.dump(2) + "\n";
  io::AtomicFile file(summary.manifest_path);
  file.write(text.data(), text.size());
  file.commit();
}

}  // namespace um::tok
