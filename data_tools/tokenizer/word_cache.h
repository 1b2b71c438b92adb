// A per-thread memo of pre-token -> ids. Natural text and code repeat a limited set of words, so most
// pre-tokens skip BPE entirely. Each thread owns its caches (no locks). The cache is direct-mapped:
// a word has one slot, a 64-byte cache line holding the word and its ids inline, so a lookup touches a
// single line and a newer word simply replaces an older one in its slot (frequent words keep coming
// back). Words longer than kMaxWordBytes or with more than kMaxIds ids are not cached.
#pragma once
#include <cstdint>
#include <string_view>
#include <vector>

namespace um::tok {

class WordCache {
 public:
  static constexpr size_t kMaxWordBytes = 22;
  static constexpr size_t kMaxIds = 8;

  WordCache();
  static uint64_t hash(std::string_view word);  // word.size() <= kMaxWordBytes
  // Appends the cached ids of `word` to out and returns true, or returns false.
  bool lookup(std::string_view word, uint64_t hash, std::vector<uint32_t>& out) const;
  // Remembers the ids of `word`, unless it or they are too long to fit an entry.
  void insert(std::string_view word, uint64_t hash, const uint32_t* ids, size_t n);

 private:
  struct alignas(64) Entry {
    uint64_t hash;
    uint8_t key_bytes;  // 0: an empty slot (words are never empty)
    uint8_t id_count;
    char key[kMaxWordBytes];  // zero-padded, so keys compare as fixed-size blocks
    uint32_t ids[kMaxIds];
  };
  static_assert(sizeof(Entry) == 64, "one cache line per entry");
  static constexpr size_t kSlots = size_t(1) << 17;  // 8 MiB

  std::vector<Entry> table_;
};

// The calling thread's cache for the tokenizer instance with id `owner` (each thread keeps the caches
// of its few most recently used tokenizers).
WordCache& thread_word_cache(uint64_t owner);

}  // namespace um::tok
