// Data files grouped into named sources for per-source evaluation, and their text size from the
// tokenizer's manifest (for bits per byte).
#pragma once
#include <string>
#include <vector>

namespace um::data {

// The source a token file belongs to: its file name without directory, extension and trailing
// numbering: "-NNNNN", then "-val" / "-train" ("c4-validation-00003.npy" -> "c4-validation",
// "shakespeare-val.bin" -> "shakespeare", "web-train-00012.bin" -> "web").
std::string source_name(const std::string& path);

struct SourceFiles {
  std::string name;
  std::vector<std::string> files;
};

// Groups files by source_name, sources in the order of their first file.
std::vector<SourceFiles> group_by_source(const std::vector<std::string>& files);

// UTF-8 text bytes per token of `path` according to a `*-manifest.json` in the same directory (written
// by ultramem-tokenize) that lists the file: the file's own text_bytes / tokens when the manifest has
// them, else those of the split (train or val) that holds it. 0 when no manifest lists the file.
double manifest_bytes_per_token(const std::string& path);

}  // namespace um::data
