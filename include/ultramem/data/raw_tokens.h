// Raw token arrays, memory-mapped: numpy `.npy` (format version 1 or 2, dtype '<u2' or '<u4',
// C order, 1-d: what dolma / OLMo write) and headerless little-endian `.u16` / `.u32` memmaps. They
// carry no vocabulary size, so it comes from the caller (data.vocab_size); ids are validated as read.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "ultramem/data/token_source.h"

namespace um::data {

class RawTokenFile : public TokenSource {
 public:
  RawTokenFile(const std::string& path, const RawTokenOptions& opt);
  ~RawTokenFile() override;
  RawTokenFile(const RawTokenFile&) = delete;
  RawTokenFile& operator=(const RawTokenFile&) = delete;

  const std::string& path() const override { return path_; }
  uint64_t size() const override { return count_; }
  uint32_t vocab_size() const override { return vocab_size_; }
  uint32_t eos_id() const override { return eos_id_; }
  uint32_t token_bytes() const { return token_bytes_; }
  void read(uint64_t start, uint64_t n, int32_t* out) const override;

 private:
  // Parses the .npy header of the mapped file; sets token_bytes_ and count_, returns the data offset.
  size_t parse_npy_header();

  std::string path_;
  uint32_t vocab_size_ = 0, eos_id_ = 0, token_bytes_ = 0;
  uint64_t count_ = 0;
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  const unsigned char* tokens_ = nullptr;
};

// Where the tokens of an .npy file are: parse_npy validates the header of a file of `bytes` bytes at
// `file` (magic, version, dtype, order, a 1-d shape, the data size); every problem is an Error naming `path`.
struct NpyLayout {
  uint32_t token_bytes = 0;
  uint64_t count = 0;
  size_t data_offset = 0;
};
NpyLayout parse_npy(const void* file, size_t bytes, const std::string& path);

// Writes `tokens` as a 1-d .npy (token_bytes 2 -> '<u2', 4 -> '<u4'), format version 1: for tests and
// for converting data; numpy.load reads it back.
void write_npy_tokens(const std::string& path, const std::vector<uint32_t>& tokens, uint32_t token_bytes);

}  // namespace um::data
