#include "ultramem/data/loader.h"

#include <numeric>
#include <random>

#include "ultramem/core/check.h"

namespace um::data {

TokenLoader::TokenLoader(const std::vector<std::string>& files, const LoaderOptions& opt) : opt_(opt) {
  UM_CHECK(opt.seq_len > 0, "a positive sequence length", opt.seq_len);
  UM_CHECK(opt.world > 0 && opt.rank >= 0 && opt.rank < opt.world, "0 <= rank < world", opt.rank, " of ", opt.world);
  add_stream({"data", files, 1.0}, 0);
}

TokenLoader::TokenLoader(const std::vector<LoaderSource>& sources, const LoaderOptions& opt) : opt_(opt), mixture_(true) {
  UM_CHECK(opt.seq_len > 0, "a positive sequence length", opt.seq_len);
  UM_CHECK(opt.world > 0 && opt.rank >= 0 && opt.rank < opt.world, "0 <= rank < world", opt.rank, " of ", opt.world);
  UM_CHECK(!sources.empty(), "at least one data source", "none");
  double total = 0;
  for (const auto& s : sources) {
    if (!(s.weight > 0)) throw Error("data source \"" + s.name + "\"", "a positive weight", std::to_string(s.weight));
    total += s.weight;
  }
  double running = 0;
  for (size_t i = 0; i < sources.size(); ++i) {
    add_stream(sources[i], i);
    running += sources[i].weight;
    streams_.back().cumulative_weight = i + 1 == sources.size() ? 1.0 : running / total;
  }
}

TokenLoader::~TokenLoader() = default;

void TokenLoader::add_stream(const LoaderSource& src, size_t index) {
  Stream st;
  st.name = src.name;
  const uint64_t T = uint64_t(opt_.seq_len);
  for (const std::string& path : src.files) {
    files_.push_back(open_token_source(path, opt_.verify_checksum, opt_.raw));
    const TokenSource& f = *files_.back();
    uint32_t expected = opt_.raw.vocab_size ? opt_.raw.vocab_size : files_.size() == 1 ? f.vocab_size() : vocab_size_;
    if (f.vocab_size() != expected)
      throw Error(path,
                  opt_.raw.vocab_size ? detail::concat("data.vocab_size (", expected, ")")
                                      : detail::concat("the vocabulary size of ", files_[0]->path(), " (", expected, ")"),
                  std::to_string(f.vocab_size()));
    vocab_size_ = expected;
    uint64_t n = f.size() > T ? (f.size() - 1) / T : 0;
    for (uint64_t j = 0; j < n; ++j) st.windows.push_back({uint32_t(files_.size() - 1), j * T});
  }
  const uint64_t world = uint64_t(opt_.world);
  st.rank_windows = st.windows.size() / world;  // every rank gets the same count: ranks stay in step
  if (st.rank_windows == 0)
    throw Error(src.files.empty() ? src.name : src.files[0],
                detail::concat("at least ", world, " windows of ", opt_.seq_len + 1, " tokens in the files"),
                detail::concat(st.windows.size(), " windows"));
  streams_.push_back(std::move(st));
  build_order(streams_.back(), index);
}

uint64_t TokenLoader::windows_per_epoch() const {
  uint64_t n = 0;
  for (const auto& s : streams_) n += s.rank_windows;
  return n;
}

uint64_t TokenLoader::total_tokens() const {
  uint64_t n = 0;
  for (const auto& f : files_) n += f->size();
  return n;
}

void TokenLoader::build_order(Stream& s, size_t index) {
  s.order.resize(s.windows.size());
  std::iota(s.order.begin(), s.order.end(), uint64_t(0));
  if (!opt_.shuffle) return;
  // Fisher-Yates with our own index draw: std::uniform_int_distribution is not specified bit-for-bit
  // across standard libraries, and the order must be reproducible anywhere.
  std::mt19937_64 rng(opt_.seed * 0x9E3779B97F4A7C15ull + s.pos.epoch * 0xD1B54A32D192ED03ull + 1 +
                      uint64_t(index) * 0x8CB92BA72F3D8DD7ull);
  for (uint64_t i = s.order.size() - 1; i > 0; --i) {
    uint64_t j = rng() % (i + 1);
    std::swap(s.order[i], s.order[j]);
  }
}

// splitmix64's finaliser: a well-mixed 64-bit function of (seed, draw), identical on every platform.
static uint64_t mix64(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

size_t TokenLoader::pick_stream(uint64_t draw) const {
  if (streams_.size() == 1) return 0;
  const uint64_t bits = mix64(mix64(opt_.seed + 0x632BE59BD9B4E019ull) + draw * 0x9E3779B97F4A7C15ull);
  const double u = double(bits >> 11) * 0x1.0p-53;  // uniform in [0, 1)
  for (size_t i = 0; i + 1 < streams_.size(); ++i)
    if (u < streams_[i].cumulative_weight) return i;
  return streams_.size() - 1;
}

LoaderState TokenLoader::state() const {
  LoaderState s;
  if (!mixture_) {
    s.epoch = streams_[0].pos.epoch;
    s.cursor = streams_[0].pos.cursor;
    return s;
  }
  s.draws = draws_;
  for (const auto& st : streams_) s.sources.push_back(st.pos);
  return s;
}

void TokenLoader::set_state(const LoaderState& s) {
  std::vector<SourceCursor> positions = mixture_ ? s.sources : std::vector<SourceCursor>{{s.epoch, s.cursor}};
  UM_CHECK(positions.size() == streams_.size(),
           detail::concat("a loader state for ", streams_.size(), mixture_ ? " mixture sources" : " source"),
           positions.size(), " sources (was the data changed since the checkpoint?)");
  for (size_t i = 0; i < streams_.size(); ++i)
    UM_CHECK(positions[i].cursor <= streams_[i].rank_windows,
             detail::concat("a loader cursor within ", streams_[i].name, "'s ", streams_[i].rank_windows,
                            " windows per epoch"),
             positions[i].cursor, " (was the data changed since the checkpoint?)");
  for (size_t i = 0; i < streams_.size(); ++i) {
    bool new_epoch = positions[i].epoch != streams_[i].pos.epoch;
    streams_[i].pos = positions[i];
    if (new_epoch) build_order(streams_[i], i);
  }
  draws_ = mixture_ ? s.draws : 0;
}

void TokenLoader::next_batch(int64_t batch, int32_t* ids, int32_t* targets) {
  const int64_t T = opt_.seq_len;
  std::vector<int32_t> window(size_t(T + 1));
  for (int64_t b = 0; b < batch; ++b) {
    const size_t k = pick_stream(draws_);
    Stream& s = streams_[k];
    if (s.pos.cursor == s.rank_windows) {
      s.pos.epoch += 1;
      s.pos.cursor = 0;
      build_order(s, k);
    }
    uint64_t pos = s.pos.cursor * uint64_t(opt_.world) + uint64_t(opt_.rank);
    const WindowRef& w = s.windows[s.order[pos]];
    files_[w.file]->read(w.start, uint64_t(T + 1), window.data());
    std::copy(window.begin(), window.begin() + T, ids + b * T);
    std::copy(window.begin() + 1, window.end(), targets + b * T);
    s.pos.cursor += 1;
    draws_ += 1;
  }
}

}  // namespace um::data
