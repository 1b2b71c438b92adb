// The training config: JSON text (comments allowed, as load_config reads files), then
// optional `--set` overrides after NUL bytes, then parse_config's validation. A config that parses
// must also survive the round trip through its resolved form (what checkpoints store).
#include <algorithm>
#include <string>

#include "fuzz_common.h"
#include "ultramem/config/json_reader.h"
#include "ultramem/train/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const size_t nul = input.find('\0');
  // load_config's own checks first: bounded nesting.
  if (um::config::json_nesting_depth(input.data(), std::min(nul, input.size())) > um::config::kMaxJsonDepth) return 0;
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(input.substr(0, nul), nullptr, true, /*ignore_comments=*/true);
  } catch (const nlohmann::json::exception&) {
    return 0;  // load_config turns this (a parse error, or a number beyond double) into an Error naming the file
  }
  UM_FUZZ_GUARD({
    for (size_t pos = nul; pos != std::string::npos && pos < input.size();) {
      const size_t next = input.find('\0', pos + 1);
      um::config::apply_override(doc, input.substr(pos + 1, next == std::string::npos ? std::string::npos : next - pos - 1));
      pos = next;
    }
    um::train::TrainConfig c = um::train::parse_config(doc);
    try {
      um::train::parse_config(um::train::to_json(c));
    } catch (const um::Error& e) {
      std::fprintf(stderr, "fuzz: a resolved config does not parse back: %s\n", e.what());
      std::abort();
    }
  });
  return 0;
}
