#include "data_tools/tokenizer/token_matcher.h"

#include <cstring>

namespace um::tok {

TokenMatcher::TokenMatcher() : nodes_(1) { first_.fill(-1); }

int32_t TokenMatcher::child(int32_t node, unsigned char b) const {
  if (node == 0) return first_[b];
  for (const auto& [byte, next] : nodes_[size_t(node)].children)
    if (byte == b) return next;
  return -1;
}

void TokenMatcher::add(std::string_view content, uint32_t id) {
  if (content.empty()) return;
  int32_t node = 0;
  for (unsigned char b : content) {
    int32_t next = child(node, b);
    if (next < 0) {
      next = int32_t(nodes_.size());
      nodes_.emplace_back();
      if (node == 0) {
        first_[b] = next;
        ++distinct_first_;
        only_first_ = b;
      } else {
        nodes_[size_t(node)].children.emplace_back(b, next);
      }
    }
    node = next;
  }
  if (nodes_[size_t(node)].id < 0) ++count_;
  nodes_[size_t(node)].id = id;  // a repeated content keeps the last id, as a map from content would
}

bool TokenMatcher::find(std::string_view text, size_t from, Match* match) const {
  if (count_ == 0) return false;
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  for (size_t start = from; start < n; ++start) {
    // Most bytes start no token: skip them (memchr when a single byte starts them all).
    if (distinct_first_ == 1) {
      const void* hit = std::memchr(s + start, only_first_, n - start);
      if (!hit) break;
      start = size_t(static_cast<const unsigned char*>(hit) - s);
    } else {
      while (start < n && first_[s[start]] < 0) ++start;
      if (start == n) break;
    }
    int32_t node = first_[s[start]];
    size_t best = 0;
    int64_t best_id = -1;
    for (size_t i = start + 1; node >= 0; ++i) {
      if (nodes_[size_t(node)].id >= 0) {
        best = i - start;
        best_id = nodes_[size_t(node)].id;
      }
      if (i == n) break;
      node = child(node, s[i]);
    }
    if (best_id >= 0) {
      *match = Match{start, best, uint32_t(best_id)};
      return true;
    }
  }
  return false;
}

}  // namespace um::tok
