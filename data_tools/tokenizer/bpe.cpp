#include "data_tools/tokenizer/bpe.h"

#include <algorithm>

namespace um::tok {

static inline uint64_t pair_key(uint32_t left, uint32_t right) { return uint64_t(left) << 32 | right; }

BpeModel::BpeModel(const std::array<uint32_t, 256>& byte_ids, const std::vector<MergeRule>& merges)
    : byte_ids_(byte_ids), merge_count_(merges.size()) {
  size_t size = 16;
  shift_ = 60;
  while (size < 2 * merges.size()) {
    size *= 2;
    --shift_;
  }
  slots_.assign(size, Slot{kEmpty, 0, 0});
  for (size_t rank = 0; rank < merges.size(); ++rank)
    insert(merges[rank].left, merges[rank].right, uint32_t(rank), merges[rank].result);
}

void BpeModel::insert(uint32_t left, uint32_t right, uint32_t rank, uint32_t result) {
  uint64_t key = pair_key(left, right);
  size_t mask = slots_.size() - 1;
  for (size_t i = size_t((key * 0x9E3779B97F4A7C15ull) >> shift_);; i = (i + 1) & mask) {
    if (slots_[i].key == kEmpty || slots_[i].key == key) {
      slots_[i] = Slot{key, rank, result};
      return;
    }
  }
}

const BpeModel::Slot* BpeModel::find(uint32_t left, uint32_t right) const {
  uint64_t key = pair_key(left, right);
  size_t mask = slots_.size() - 1;
  for (size_t i = size_t((key * 0x9E3779B97F4A7C15ull) >> shift_);; i = (i + 1) & mask) {
    if (slots_[i].key == key) return &slots_[i];
    if (slots_[i].key == kEmpty) return nullptr;
  }
}

namespace {

constexpr uint32_t kDead = ~uint32_t(0);

struct Symbol {
  uint32_t id;
  int32_t prev, next;  // -1 at the ends
};

struct Candidate {
  uint32_t rank;
  int32_t pos;  // the left symbol of the pair
};

// std heap functions build a max-heap; "lower priority" is the larger (rank, pos).
inline bool lower_priority(const Candidate& a, const Candidate& b) {
  return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
}

}  // namespace

void BpeModel::encode_word(std::string_view word, std::vector<uint32_t>& out) const {
  const size_t n = word.size();
  if (n == 1) {
    out.push_back(byte_ids_[uint8_t(word[0])]);
    return;
  }
  // Scratch buffers live per thread, so encoding many words allocates nothing.
  thread_local std::vector<Symbol> sym;
  thread_local std::vector<Candidate> heap;
  sym.resize(n);
  heap.clear();
  for (size_t i = 0; i < n; ++i)
    sym[i] = Symbol{byte_ids_[uint8_t(word[i])], int32_t(i) - 1, i + 1 < n ? int32_t(i + 1) : -1};

  auto candidate_at = [&](int32_t pos) {
    int32_t right = sym[pos].next;
    if (right < 0) return false;
    const Slot* m = find(sym[pos].id, sym[right].id);
    if (!m) return false;
    heap.push_back(Candidate{m->rank, pos});
    return true;
  };
  for (size_t i = 0; i + 1 < n; ++i) candidate_at(int32_t(i));
  std::make_heap(heap.begin(), heap.end(), lower_priority);

  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), lower_priority);
    Candidate c = heap.back();
    heap.pop_back();
    Symbol& left = sym[c.pos];
    if (left.id == kDead || left.next < 0) continue;
    // A stale entry: the pair at c.pos changed since it was pushed. Ranks are unique per pair, so an
    // equal rank means the very same pair is still there.
    const Slot* m = find(left.id, sym[left.next].id);
    if (!m || m->rank != c.rank) continue;
    int32_t right = left.next;
    left.id = m->result;
    left.next = sym[right].next;
    if (left.next >= 0) sym[left.next].prev = c.pos;
    sym[right].id = kDead;
    if (left.prev >= 0 && candidate_at(left.prev)) std::push_heap(heap.begin(), heap.end(), lower_priority);
    if (candidate_at(c.pos)) std::push_heap(heap.begin(), heap.end(), lower_priority);
  }
  for (int32_t i = 0; i >= 0; i = sym[i].next) out.push_back(sym[i].id);
}

}  // namespace um::tok
