#include "ultramem/data/token_source.h"

#include "ultramem/core/check.h"
#include "ultramem/data/raw_tokens.h"
#include "ultramem/data/shard.h"

namespace um::data {

static bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_raw_token_file(const std::string& path) {
  return ends_with(path, ".npy") || ends_with(path, ".u16") || ends_with(path, ".u32");
}

std::unique_ptr<TokenSource> open_token_source(const std::string& path, bool verify_checksum,
                                               const RawTokenOptions& raw) {
  if (is_raw_token_file(path)) return std::make_unique<RawTokenFile>(path, raw);
  return std::make_unique<Shard>(path, verify_checksum);
}

}  // namespace um::data
