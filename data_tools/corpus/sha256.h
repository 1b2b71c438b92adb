// SHA-256 (FIPS 180-4), to record in a manifest exactly which tokenizer file made the shards; its hex
// digest is what `sha256sum` prints.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace um::tok {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t bytes);
  std::array<uint8_t, 32> digest();  // finishes the hash; call once

 private:
  void block(const uint8_t* p);
  std::array<uint32_t, 8> h_;
  uint8_t pending_[64];
  size_t pending_bytes_ = 0;
  uint64_t total_bytes_ = 0;
};

// The lowercase hex SHA-256 of a file's contents; an unreadable file is an Error naming it.
std::string sha256_file_hex(const std::string& path);

}  // namespace um::tok
