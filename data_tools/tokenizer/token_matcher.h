// Finds added tokens (special tokens such as "<|endoftext|>", and NeoX's runs of spaces) verbatim in
// text, leftmost-longest and non-overlapping: the Aho-Corasick "LeftmostLongest" semantics that Hugging
// Face's AddedVocabulary uses. A byte trie suffices for the few dozen tokens a tokenizer adds.
#pragma once
#include <array>
#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

namespace um::tok {

class TokenMatcher {
 public:
  TokenMatcher();
  void add(std::string_view content, uint32_t id);
  bool empty() const { return count_ == 0; }

  struct Match {
    size_t start, length;
    uint32_t id;
  };
  // The leftmost match starting at or after `from` (the longest of those starting there); false if none.
  bool find(std::string_view text, size_t from, Match* match) const;

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> children;
    int64_t id = -1;  // the token ending here, if any
  };
  int32_t child(int32_t node, unsigned char b) const;

  std::vector<Node> nodes_;          // nodes_[0] is the root
  std::array<int32_t, 256> first_;  // root's children by first byte, -1 when none
  int distinct_first_ = 0;           // how many bytes start a token: with one, memchr finds candidates
  unsigned char only_first_ = 0;
  size_t count_ = 0;
};

}  // namespace um::tok
