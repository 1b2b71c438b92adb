// Streams (seq_len + 1)-token windows from memory-mapped token files (token_source.h: ultramem
// shards, .npy, .u16/.u32). Each file is cut into non-overlapping windows (the +1 target token
// overlaps the next window's first); the windows of a source's files are visited in an order fixed by
// (seed, epoch), and data-parallel rank r of w takes every w-th window of that order, so ranks see
// disjoint data.
//
// A mixture has several sources with weights: window k is drawn from source s with probability
// weight_s / sum(weights), the choice a pure function of (seed, k), so it is the same on every rank and
// after a resume. Each source keeps its own epoch and cursor.
//
// The state is a handful of integers, saved in checkpoints: a resumed run sees exactly the batches the
// uninterrupted run would have.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ultramem/data/shard.h"  // expand_patterns
#include "ultramem/data/token_source.h"

namespace um::data {

struct SourceCursor {
  uint64_t epoch = 0;
  uint64_t cursor = 0;  // windows this rank consumed from the source in this epoch
  bool operator==(const SourceCursor&) const = default;
};

struct LoaderState {
  uint64_t epoch = 0;   // single-source loaders: the epoch
  uint64_t cursor = 0;  // single-source loaders: windows this rank consumed in this epoch
  uint64_t draws = 0;   // mixtures: windows drawn so far (with the seed it picks the next window's source)
  std::vector<SourceCursor> sources;  // mixtures: each source's position, in declaration order
  bool operator==(const LoaderState&) const = default;
};

// One source of a mixture: a name (for messages and checkpoints), its files and its sampling weight.
struct LoaderSource {
  std::string name;
  std::vector<std::string> files;
  double weight = 1;
};

struct LoaderOptions {
  int64_t seq_len = 0;
  uint64_t seed = 0;
  bool shuffle = true;
  int rank = 0, world = 1;
  bool verify_checksum = true;
  RawTokenOptions raw;  // vocabulary of raw token arrays (.npy/.u16/.u32); when set, shards must match it
};

class TokenLoader {
 public:
  // One source: all windows of all files, in one (shuffled) order per epoch.
  TokenLoader(const std::vector<std::string>& files, const LoaderOptions& opt);
  // A weighted mixture of sources.
  TokenLoader(const std::vector<LoaderSource>& sources, const LoaderOptions& opt);
  ~TokenLoader();

  // Fills ids and targets (each batch * seq_len int32, row-major [batch, seq_len]) with the next
  // windows; a source wraps to its next epoch (new order) at its end.
  void next_batch(int64_t batch, int32_t* ids, int32_t* targets);

  LoaderState state() const;
  void set_state(const LoaderState& s);
  bool is_mixture() const { return mixture_; }
  size_t source_count() const { return streams_.size(); }
  const std::string& source_name(size_t i) const { return streams_[i].name; }
  uint64_t windows_per_epoch() const;  // this rank's windows, summed over sources
  uint32_t vocab_size() const { return vocab_size_; }
  int64_t seq_len() const { return opt_.seq_len; }
  uint64_t total_tokens() const;

 private:
  struct WindowRef {
    uint32_t file;
    uint64_t start;
  };
  struct Stream {
    std::string name;
    double cumulative_weight = 1;   // normalised running sum: the draw picks the first stream above u
    std::vector<WindowRef> windows;  // natural order
    std::vector<uint64_t> order;     // this epoch's permutation of windows
    uint64_t rank_windows = 0;
    SourceCursor pos;
  };
  void add_stream(const LoaderSource& src, size_t index);
  void build_order(Stream& s, size_t index);
  size_t pick_stream(uint64_t draw) const;

  std::vector<std::unique_ptr<TokenSource>> files_;
  std::vector<Stream> streams_;
  LoaderOptions opt_;
  bool mixture_ = false;
  uint64_t draws_ = 0;
  uint32_t vocab_size_ = 0;
};

}  // namespace um::data
