// The checksum of shard payloads and checkpoint files: FNV-1a 64 over the bytes read as
// little-endian u64 words, the tail zero-padded (docs/data-format.md). Streaming: any split of the
// bytes into update() calls gives the value data::payload_checksum gives for the whole buffer.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace um::io {

class Checksum64 {
 public:
  void update(const void* data, size_t bytes);
  uint64_t value() const;  // of everything so far (does not end the stream)
  uint64_t bytes() const { return total_; }

 private:
  uint64_t h_ = 0xcbf29ce484222325ull;
  unsigned char tail_[8] = {};
  size_t tail_len_ = 0;
  uint64_t total_ = 0;
};

// 16 lowercase hex digits, as checkpoint manifests write it.
std::string checksum_hex(uint64_t v);
// Checksum and size of a whole file; an Error names the file when it cannot be read.
uint64_t file_checksum(const std::string& path, uint64_t* bytes);

}  // namespace um::io
