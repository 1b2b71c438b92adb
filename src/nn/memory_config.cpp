#include "ultramem/nn/memory_config.h"

#include <sstream>

#include "ultramem/core/check.h"

namespace um::nn {

std::vector<MemoryPlacement> memory_placements(const MemoryConfig& m, int64_t n_layers, const std::string& where) {
  std::vector<MemoryPlacement> out;
  if (!m.enabled()) return out;
  if (m.insert_way == "full") {
    for (int64_t i = 0; i < n_layers; ++i) out.push_back({i, i});
    return out;
  }
  // "a:b/c:d": read block a's FFN input, add after block b; 0 <= a <= b < n_layers, in increasing order.
  const std::string expected = detail::concat("\"full\", \"no_mem\" or \"a:b/c:d/...\" with 0 <= a <= b < n_layers (",
                                              n_layers, ") and the pairs in increasing order");
  if (m.insert_way.empty() || m.insert_way.back() == '/')  // getline would drop a trailing empty pair
    throw Error(where, expected, "\"" + m.insert_way + "\"");
  std::stringstream ss(m.insert_way);
  std::string item;
  while (std::getline(ss, item, '/')) {
    const size_t colon = item.find(':');
    MemoryPlacement p;
    try {
      size_t used_a = 0, used_b = 0;
      if (colon == std::string::npos) throw std::invalid_argument("no colon");
      p.read = std::stoll(item.substr(0, colon), &used_a);
      p.write = std::stoll(item.substr(colon + 1), &used_b);
      if (used_a != colon || used_b != item.size() - colon - 1) throw std::invalid_argument("trailing text");
    } catch (const std::exception&) {
      throw Error(where, expected, "\"" + m.insert_way + "\" (bad pair \"" + item + "\")");
    }
    if (p.read < 0 || p.write < p.read || p.write >= n_layers || (!out.empty() && p.read <= out.back().read))
      throw Error(where, expected, "\"" + m.insert_way + "\"");
    out.push_back(p);
  }
  if (out.empty()) throw Error(where, expected, "\"" + m.insert_way + "\"");
  return out;
}

}  // namespace um::nn
