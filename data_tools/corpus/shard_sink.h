// Collects the token stream of one split (train or val) into shards of at most `shard_tokens` tokens,
// each holding whole documents (a document longer than that gets a shard of its own), written with
// um::data::write_shard: PREFIX-SPLIT-00000.bin, -00001, ... Each shard appears under its final name only
// once complete.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace um::tok {

struct ShardInfo {
  std::string path;
  uint64_t tokens = 0, documents = 0;
};

class ShardSink {
 public:
  ShardSink(std::string out_dir, std::string prefix, std::string split, uint64_t shard_tokens, uint32_t vocab_size,
            uint32_t eos_id);
  // One document's ids, its end-of-document id included.
  void add_document(const uint32_t* ids, size_t count);
  // Writes the last, partly filled shard.
  void finish();
  const std::vector<ShardInfo>& shards() const { return shards_; }
  // The file name the shard with this index gets.
  std::string shard_path(size_t index) const;

 private:
  void flush();

  std::string out_dir_, prefix_, split_;
  uint64_t shard_tokens_;
  uint32_t vocab_size_, eos_id_;
  std::vector<uint32_t> tokens_;
  uint64_t documents_ = 0;
  std::vector<ShardInfo> shards_;
};

}  // namespace um::tok
