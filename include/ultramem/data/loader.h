// Streams (seq_len + 1)-token windows from memory-mapped shards. Each shard is cut into
// non-overlapping windows (the +1 target token overlaps the next window's first); the windows of all
// shards are visited in an order fixed by (seed, epoch), and data-parallel rank r of w takes every
// w-th window of that order, so ranks see disjoint data. The state (epoch, cursor) is two integers,
// saved in checkpoints: a resumed run sees exactly the batches the uninterrupted run would have.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ultramem/data/shard.h"

namespace um::data {

struct LoaderState {
  uint64_t epoch = 0;
  uint64_t cursor = 0;  // windows this rank consumed in this epoch
};

struct LoaderOptions {
  int64_t seq_len = 0;
  uint64_t seed = 0;
  bool shuffle = true;
  int rank = 0, world = 1;
  bool verify_checksum = true;
};

class TokenLoader {
 public:
  TokenLoader(const std::vector<std::string>& files, const LoaderOptions& opt);

  // Fills ids and targets (each batch * seq_len int32, row-major [batch, seq_len]) with the next
  // windows; wraps to the next epoch (new order) at the end.
  void next_batch(int64_t batch, int32_t* ids, int32_t* targets);

  LoaderState state() const { return state_; }
  void set_state(const LoaderState& s);
  uint64_t windows_per_epoch() const { return rank_windows_; }
  uint32_t vocab_size() const { return vocab_size_; }
  int64_t seq_len() const { return opt_.seq_len; }
  uint64_t total_tokens() const;

 private:
  void build_order();
  struct WindowRef {
    uint32_t shard;
    uint64_t start;
  };
  std::vector<std::unique_ptr<Shard>> shards_;
  LoaderOptions opt_;
  std::vector<WindowRef> windows_;  // natural order
  std::vector<uint64_t> order_;     // this epoch's permutation of windows_
  uint64_t rank_windows_ = 0;
  uint32_t vocab_size_ = 0;
  LoaderState state_;
};

}  // namespace um::data
