// A read-only, memory-mapped array of token ids: the loader's view of one data file, whatever its
// format. Two formats implement it:
//   - ultramem shards (`.bin`, shard.h): vocabulary size and eos id come from the file's header;
//   - raw token arrays as written by dolma / OLMo and nanoGPT-style pipelines (raw_tokens.h): numpy
//     `.npy` files (1-d, '<u2' or '<u4') and headerless little-endian `.u16` / `.u32` memmaps, whose
//     vocabulary size and eos id come from the config (data.vocab_size, data.eos_id).
// Every token id is checked against the vocabulary size as it is read; errors name the file.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

namespace um::data {

class TokenSource {
 public:
  virtual ~TokenSource() = default;
  virtual const std::string& path() const = 0;
  virtual uint64_t size() const = 0;  // tokens
  virtual uint32_t vocab_size() const = 0;
  virtual uint32_t eos_id() const = 0;
  // Copies tokens [start, start + n) into out as int32; an id at or above vocab_size() is an Error.
  virtual void read(uint64_t start, uint64_t n, int32_t* out) const = 0;
};

// How to open files that carry no vocabulary of their own (raw token arrays).
struct RawTokenOptions {
  uint32_t vocab_size = 0;  // 0 = not given: opening a raw token file is then an error
  uint32_t eos_id = 0;
};

// True for the extensions read as raw token arrays: .npy, .u16, .u32.
bool is_raw_token_file(const std::string& path);

// Opens `path` by its extension: .npy / .u16 / .u32 as raw token arrays, everything else as an
// ultramem shard (verify_checksum applies to shards only; raw arrays carry no checksum).
std::unique_ptr<TokenSource> open_token_source(const std::string& path, bool verify_checksum,
                                               const RawTokenOptions& raw);

}  // namespace um::data
