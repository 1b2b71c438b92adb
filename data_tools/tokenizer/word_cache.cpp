#include "data_tools/tokenizer/word_cache.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <utility>

namespace um::tok {

WordCache::WordCache() : table_(kSlots, Entry{}) {}

uint64_t WordCache::hash(std::string_view word) {
  // Words are short: mix 8-byte chunks with multiply-xorshift steps (no per-byte loop).
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (uint64_t(word.size()) * 0xC2B2AE3D27D4EB4Full);
  for (size_t i = 0; i < word.size(); i += 8) {
    uint64_t chunk = 0;
    std::memcpy(&chunk, word.data() + i, std::min<size_t>(8, word.size() - i));
    h = (h ^ chunk) * 0xFF51AFD7ED558CCDull;
    h ^= h >> 32;
  }
  h *= 0xC4CEB9FE1A85EC53ull;
  return h ^ (h >> 29);
}

bool WordCache::lookup(std::string_view word, uint64_t hash, std::vector<uint32_t>& out) const {
  char key[kMaxWordBytes] = {};
  std::memcpy(key, word.data(), word.size());
  const Entry& e = table_[hash & (kSlots - 1)];
  if (e.hash == hash && e.key_bytes == word.size() && std::memcmp(e.key, key, kMaxWordBytes) == 0) {
    out.insert(out.end(), e.ids, e.ids + e.id_count);
    return true;
  }
  return false;
}

void WordCache::insert(std::string_view word, uint64_t hash, const uint32_t* ids, size_t n) {
  if (word.empty() || word.size() > kMaxWordBytes || n > kMaxIds) return;
  Entry& e = table_[hash & (kSlots - 1)];  // a word hashing to the same slot is replaced
  e = Entry{};
  e.hash = hash;
  e.key_bytes = uint8_t(word.size());
  e.id_count = uint8_t(n);
  std::memcpy(e.key, word.data(), word.size());
  std::memcpy(e.ids, ids, n * sizeof(uint32_t));
}

WordCache& thread_word_cache(uint64_t owner) {
  constexpr size_t kOwnersPerThread = 4;
  thread_local std::vector<std::pair<uint64_t, std::unique_ptr<WordCache>>> caches;
  for (auto& [id, cache] : caches)
    if (id == owner) return *cache;
  if (caches.size() == kOwnersPerThread) caches.erase(caches.begin());
  caches.emplace_back(owner, std::make_unique<WordCache>());
  return *caches.back().second;
}

}  // namespace um::tok
