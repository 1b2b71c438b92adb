#include "data_tools/corpus/shard_sink.h"

#include <cstdio>
#include <filesystem>

#include "ultramem/data/shard.h"

namespace um::tok {

ShardSink::ShardSink(std::string out_dir, std::string prefix, std::string split, uint64_t shard_tokens,
                     uint32_t vocab_size, uint32_t eos_id)
    : out_dir_(std::move(out_dir)), prefix_(std::move(prefix)), split_(std::move(split)),
      shard_tokens_(shard_tokens), vocab_size_(vocab_size), eos_id_(eos_id) {}

std::string ShardSink::shard_path(size_t index) const {
  char number[16];
  std::snprintf(number, sizeof(number), "%05zu", index);
  return (std::filesystem::path(out_dir_) / (prefix_ + "-" + split_ + "-" + number + ".bin")).string();
}

void ShardSink::add_document(const uint32_t* ids, size_t count) {
  if (!tokens_.empty() && tokens_.size() + count > shard_tokens_) flush();
  tokens_.insert(tokens_.end(), ids, ids + count);
  ++documents_;
}

void ShardSink::flush() {
  if (tokens_.empty()) return;
  ShardInfo info{shard_path(shards_.size()), tokens_.size(), documents_};
  data::write_shard(info.path, tokens_, vocab_size_, eos_id_, documents_);
  shards_.push_back(info);
  tokens_.clear();
  documents_ = 0;
}

void ShardSink::finish() { flush(); }

}  // namespace um::tok
