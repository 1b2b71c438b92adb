// um::tok::Tokenizer: byte-level BPE as in GPT-2, GPT-NeoX and OLMo, loaded from a Hugging Face
// tokenizer.json or from GPT-2's encoder.json + vocab.bpe, with no Python at run time.
//
// encode(text), for text that is well-formed UTF-8, gives the ids of the reference implementations:
// Hugging Face `Tokenizer.encode(text, add_special_tokens=False).ids` for a tokenizer.json (added
// tokens matched verbatim first, then the normalizer, the ByteLevel pre-tokenizer's regex and BPE) and
// tiktoken's `encode(text, allowed_special="all")` for GPT-2. encode_ordinary(text) treats special tokens
// as plain text (tiktoken's encode_ordinary; non-special added tokens such as NeoX's runs of spaces
// still apply). Bytes that are not well-formed UTF-8 split the text: the well-formed stretches are
// encoded as above, each other byte becomes its single-byte token, so decode(encode(x)) == x for any
// bytes x (after NFC for a tokenizer that normalizes). The one exception: a vocabulary without a token
// for some byte (NeoX has none for C0, C1, F5-FF, which never occur in UTF-8) encodes that byte as
// U+FFFD, the replacement character.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace um::tok {

struct AddedToken {
  std::string content;
  uint32_t id = 0;
  bool special = false;     // skipped by encode_ordinary
  bool normalized = false;  // matched in the normalized text (else in the raw text, before normalizing)
};

struct TokenizerSpec;
class ThreadPool;

class Tokenizer {
 public:
  // A tokenizer.json file, or a directory holding tokenizer.json or encoder.json + vocab.bpe.
  static Tokenizer load(const std::string& path);
  static Tokenizer from_hf_json(const std::string& path);
  static Tokenizer from_gpt2_files(const std::string& encoder_json, const std::string& vocab_bpe);

  explicit Tokenizer(const TokenizerSpec& spec);
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  std::vector<uint32_t> encode(std::string_view text) const;
  std::vector<uint32_t> encode_ordinary(std::string_view text) const;
  // Appends the ids of text to out; allow_special selects encode or encode_ordinary behaviour.
  void encode_append(std::string_view text, bool allow_special, std::vector<uint32_t>& out) const;
  // Encodes documents on `threads` threads; result[i] belongs to docs[i] whatever the thread count.
  // Word caches live in the threads: with a temporary pool each call starts cold, so callers that
  // encode many batches pass their own long-lived pool.
  std::vector<std::vector<uint32_t>> encode_batch(const std::vector<std::string_view>& docs, int threads,
                                                  bool allow_special = true) const;
  std::vector<std::vector<uint32_t>> encode_batch(const std::vector<std::string_view>& docs, ThreadPool& pool,
                                                  bool allow_special = true) const;

  // The bytes the ids stand for; an id outside the vocabulary is an Error.
  std::string decode(const std::vector<uint32_t>& ids) const;
  const std::string& token_bytes(uint32_t id) const;

  // One more than the largest id: every id is below it.
  uint32_t vocab_size() const;
  // The id of a vocabulary entry or added token, given as written in the file (byte-level alphabet
  // for model tokens, e.g. "Ġthe").
  std::optional<uint32_t> token_to_id(std::string_view token) const;
  // The id of "<|endoftext|>", the end-of-document token of GPT-2, NeoX and OLMo, when present.
  std::optional<uint32_t> eos_id() const;
  const std::vector<AddedToken>& added_tokens() const;
  // The files it was loaded from, and "huggingface" or "gpt2".
  const std::vector<std::string>& source_files() const;
  const std::string& kind() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace um::tok
