#include "ultramem/data/loader.h"

#include <numeric>
#include <random>

#include "ultramem/core/check.h"

namespace um::data {

TokenLoader::TokenLoader(const std::vector<std::string>& files, const LoaderOptions& opt) : opt_(opt) {
  UM_CHECK(opt.seq_len > 0, "a positive sequence length", opt.seq_len);
  UM_CHECK(opt.world > 0 && opt.rank >= 0 && opt.rank < opt.world, "0 <= rank < world", opt.rank, " of ", opt.world);
  for (size_t s = 0; s < files.size(); ++s) {
    shards_.push_back(std::make_unique<Shard>(files[s], opt.verify_checksum));
    const ShardHeader& h = shards_.back()->header();
    if (s == 0) vocab_size_ = h.vocab_size;
    if (h.vocab_size != vocab_size_)
      throw Error(files[s], detail::concat("the vocabulary size of ", files[0], " (", vocab_size_, ")"),
                  std::to_string(h.vocab_size));
    uint64_t T = uint64_t(opt.seq_len);
    uint64_t n = h.token_count > T ? (h.token_count - 1) / T : 0;
    for (uint64_t j = 0; j < n; ++j) windows_.push_back({uint32_t(s), j * T});
  }
  uint64_t world = uint64_t(opt.world);
  rank_windows_ = windows_.size() / world;  // every rank gets the same count: ranks stay in step
  if (rank_windows_ == 0)
    throw Error(files.empty() ? "data" : files[0],
                detail::concat("at least ", world, " windows of ", opt.seq_len + 1, " tokens in the shards"),
                detail::concat(windows_.size(), " windows"));
  build_order();
}

uint64_t TokenLoader::total_tokens() const {
  uint64_t n = 0;
  for (auto& s : shards_) n += s->size();
  return n;
}

void TokenLoader::build_order() {
  order_.resize(windows_.size());
  std::iota(order_.begin(), order_.end(), uint64_t(0));
  if (!opt_.shuffle) return;
  // Fisher-Yates with our own index draw: std::uniform_int_distribution is not specified bit-for-bit
  // across standard libraries, and the order must be reproducible anywhere.
  std::mt19937_64 rng(opt_.seed * 0x9E3779B97F4A7C15ull + state_.epoch * 0xD1B54A32D192ED03ull + 1);
  for (uint64_t i = order_.size() - 1; i > 0; --i) {
    uint64_t j = rng() % (i + 1);
    std::swap(order_[i], order_[j]);
  }
}

void TokenLoader::set_state(const LoaderState& s) {
  UM_CHECK(s.cursor <= rank_windows_, detail::concat("a loader cursor within the epoch's ", rank_windows_, " windows"),
           s.cursor, " (was the data changed since the checkpoint?)");
  bool new_epoch = s.epoch != state_.epoch;
  state_ = s;
  if (new_epoch) build_order();
}

void TokenLoader::next_batch(int64_t batch, int32_t* ids, int32_t* targets) {
  const int64_t T = opt_.seq_len;
  std::vector<int32_t> window(size_t(T + 1));
  for (int64_t b = 0; b < batch; ++b) {
    if (state_.cursor == rank_windows_) {
      state_.epoch += 1;
      state_.cursor = 0;
      build_order();
    }
    uint64_t pos = state_.cursor * uint64_t(opt_.world) + uint64_t(opt_.rank);
    const WindowRef& w = windows_[order_[pos]];
    shards_[w.shard]->read(w.start, uint64_t(T + 1), window.data());
    std::copy(window.begin(), window.begin() + T, ids + b * T);
    std::copy(window.begin() + 1, window.end(), targets + b * T);
    state_.cursor += 1;
  }
}

}  // namespace um::data
