// Byte-pair encoding of one pre-token by merge rank. The symbols form a linked list over the word's
// bytes and candidate merges sit in a binary heap ordered by (rank, position), so a word of n bytes
// costs O(n log n) whatever its length (a 10k-character word is no special case). Stale heap entries
// are recognised when popped. Lowest rank first and, among equal ranks, the leftmost pair first: the
// order of Hugging Face's BPE and of tiktoken's rank-based merge loop.
#pragma once
#include <array>
#include <cstdint>
#include <string_view>
#include <vector>

namespace um::tok {

// Merge `left right -> result`; a merge's rank is its index in the merge list.
struct MergeRule {
  uint32_t left, right, result;
};

// byte_ids entry of a byte without a single-byte token. Some vocabularies (GPT-NeoX's) drop the 13 bytes
// that never occur in well-formed UTF-8 (C0, C1, F5-FF); words, being well-formed, never contain them.
constexpr uint32_t kNoByteToken = ~uint32_t(0);

class BpeModel {
 public:
  BpeModel() = default;
  // byte_ids[b]: the id of the single-byte token of byte b. When a pair appears twice in `merges` the
  // later entry wins, as in Hugging Face's merge table.
  BpeModel(const std::array<uint32_t, 256>& byte_ids, const std::vector<MergeRule>& merges);

  // Appends the ids of `word` (raw bytes, any length > 0) to out.
  void encode_word(std::string_view word, std::vector<uint32_t>& out) const;

  uint32_t byte_id(uint8_t b) const { return byte_ids_[b]; }
  size_t merge_count() const { return merge_count_; }

 private:
  struct Slot {
    uint64_t key;  // left << 32 | right; kEmpty when unused
    uint32_t rank, result;
  };
  static constexpr uint64_t kEmpty = ~uint64_t(0);
  const Slot* find(uint32_t left, uint32_t right) const;
  void insert(uint32_t left, uint32_t right, uint32_t rank, uint32_t result);

  std::array<uint32_t, 256> byte_ids_{};
  std::vector<Slot> slots_;  // open addressing, linear probing, power-of-two size, at most half full
  int shift_ = 64;
  size_t merge_count_ = 0;
};

}  // namespace um::tok
