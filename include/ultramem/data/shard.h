// Token shards (`.bin`): a 1024-byte little-endian header followed by the tokens.
//   offset  size  field
//        0     8  magic "UMTOKENS"
//        8     4  version (1)
//       12     4  bytes per token (2 = u16, 4 = u32)
//       16     8  token count
//       24     4  vocabulary size (every token id is below it)
//       28     4  end-of-document token id (documents are separated by it)
//       32     8  payload checksum: FNV-1a 64 over the payload as little-endian u64 words, tail zero-padded
//       40     8  document count (informational)
//       48   976  reserved, zero
// The reader memory-maps the file, so a corpus is never read into RAM as a whole.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "ultramem/data/token_source.h"

namespace um::data {

constexpr size_t kShardHeaderBytes = 1024;
constexpr uint32_t kShardVersion = 1;

struct ShardHeader {
  uint32_t version = kShardVersion;
  uint32_t token_bytes = 2;
  uint64_t token_count = 0;
  uint32_t vocab_size = 0;
  uint32_t eos_id = 0;
  uint64_t checksum = 0;
  uint64_t document_count = 0;
};

uint64_t payload_checksum(const void* data, size_t bytes);

// Validates the header of a shard file whose `file_bytes` bytes are at `file` (magic, version, token
// width, the size the token count implies, eos below vocab, and the checksum when asked); every
// problem is an Error naming `path`.
ShardHeader parse_shard_header(const void* file, size_t file_bytes, const std::string& path, bool verify_checksum);

// A read-only memory-mapped shard. Opening validates the header and the file size (and the checksum
// when asked); every problem is an Error naming the file.
class Shard : public TokenSource {
 public:
  Shard(const std::string& path, bool verify_checksum);
  ~Shard() override;
  Shard(const Shard&) = delete;
  Shard& operator=(const Shard&) = delete;

  const ShardHeader& header() const { return header_; }
  const std::string& path() const override { return path_; }
  uint64_t size() const override { return header_.token_count; }
  uint32_t vocab_size() const override { return header_.vocab_size; }
  uint32_t eos_id() const override { return header_.eos_id; }
  uint32_t token(uint64_t i) const {
    return header_.token_bytes == 2 ? static_cast<const uint16_t*>(tokens_)[i] : static_cast<const uint32_t*>(tokens_)[i];
  }
  // Copies tokens [start, start + n) into out as int32.
  void read(uint64_t start, uint64_t n, int32_t* out) const override;

 private:
  std::string path_;
  ShardHeader header_;
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  const void* tokens_ = nullptr;
};

// Writes a shard atomically (temporary name, fsync, rename): no half shard ever has the final name.
void write_shard(const std::string& path, const std::vector<uint32_t>& tokens, uint32_t vocab_size, uint32_t eos_id,
                 uint64_t document_count);

// Expands a comma-separated list of paths and glob patterns into sorted file names; an Error names
// `key` when a pattern matches nothing.
std::vector<std::string> expand_patterns(const std::string& patterns, const std::string& key);

}  // namespace um::data
