#include "ultramem/data/sources.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "ultramem/core/check.h"

namespace um::data {

namespace fs = std::filesystem;
using json = nlohmann::json;

static bool strip_suffix(std::string& s, const std::string& suffix) {
  if (s.size() <= suffix.size() || s.compare(s.size() - suffix.size(), suffix.size(), suffix) != 0) return false;
  s.resize(s.size() - suffix.size());
  return true;
}

std::string source_name(const std::string& path) {
  std::string name = fs::path(path).filename().string();
  for (const char* ext : {".bin", ".npy", ".u16", ".u32"})
    if (strip_suffix(name, ext)) break;
  size_t dash = name.rfind('-');
  if (dash != std::string::npos && dash > 0 && dash + 1 < name.size() &&
      name.find_first_not_of("0123456789", dash + 1) == std::string::npos)
    name.resize(dash);
  if (!strip_suffix(name, "-val")) strip_suffix(name, "-train");
  return name;
}

std::vector<SourceFiles> group_by_source(const std::vector<std::string>& files) {
  std::vector<SourceFiles> groups;
  for (const std::string& f : files) {
    std::string name = source_name(f);
    auto it = std::find_if(groups.begin(), groups.end(), [&](const SourceFiles& g) { return g.name == name; });
    if (it == groups.end()) {
      groups.push_back({name, {f}});
    } else if (std::find(it->files.begin(), it->files.end(), f) == it->files.end()) {
      it->files.push_back(f);  // a file matched by two patterns counts once
    }
  }
  return groups;
}

// Bytes per token of `file` in one parsed manifest, 0 when it does not list the file.
static double bytes_per_token_in(const json& manifest, const std::string& file) {
  for (const char* split : {"train", "val"}) {
    if (!manifest.contains(split) || !manifest[split].is_object()) continue;
    const json& s = manifest[split];
    if (!s.contains("shards")) continue;
    for (const json& shard : s["shards"]) {
      if (shard.value("file", std::string()) != file) continue;
      if (shard.contains("text_bytes") && shard.value("tokens", 0.0) > 0)
        return shard["text_bytes"].get<double>() / shard["tokens"].get<double>();
      double tokens = s.value("tokens", 0.0), bytes = s.value("text_bytes", 0.0);
      return tokens > 0 ? bytes / tokens : 0;
    }
  }
  return 0;
}

double manifest_bytes_per_token(const std::string& path) {
  const fs::path p(path);
  const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  std::error_code ec;
  std::vector<fs::path> manifests;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    std::string name = entry.path().filename().string();
    if (name.size() > 14 && name.compare(name.size() - 14, 14, "-manifest.json") == 0) manifests.push_back(entry.path());
  }
  std::sort(manifests.begin(), manifests.end());
  for (const fs::path& m : manifests) {
    std::ifstream in(m);
    json doc;
    try {
      doc = json::parse(in);
    } catch (const json::exception& e) {
      throw Error(m.string(), "a valid JSON manifest", e.what());
    }
    double r = 0;
    try {
      r = bytes_per_token_in(doc, p.filename().string());
    } catch (const json::exception& e) {  // a field of the wrong type
      throw Error(m.string(), "a manifest whose splits list shards {file, tokens, text_bytes} (docs/data-format.md)", e.what());
    }
    if (r > 0 && std::isfinite(r)) return r;
  }
  return 0;
}

}  // namespace um::data
