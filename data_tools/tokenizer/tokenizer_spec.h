// Private: what the file readers extract from a tokenizer's files, before the Tokenizer builds its
// lookup structures from it.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "data_tools/tokenizer/tokenizer.h"

namespace um::tok {

struct TokenizerSpec {
  std::string kind;                                        // "huggingface" or "gpt2"
  std::vector<std::string> files;                          // what it was read from
  std::vector<std::pair<std::string, uint32_t>> vocab;     // token (byte-level alphabet) -> id
  std::vector<std::pair<std::string, std::string>> merges; // in rank order
  std::vector<AddedToken> added;
  bool nfc = false;               // normalizer NFC
  bool add_prefix_space = false;  // ByteLevel: prepend ' ' to each segment that lacks one
  bool use_regex = true;          // ByteLevel: split with the GPT-2 regex (else one piece a segment)
  bool ignore_merges = false;     // BPE: a pre-token found in the vocabulary is one token
};

// Reads a Hugging Face tokenizer.json. Configurations this byte-level BPE does not implement (other
// normalizers or pre-tokenizers, dropout, subword prefixes, lstrip/rstrip added tokens, truncation)
// are Errors naming the key, never silently different ids.
TokenizerSpec read_hf_tokenizer_json(const std::string& path);

// Reads GPT-2's encoder.json (token -> id) and vocab.bpe (merges, one "a b" a line after a
// "#version" header). "<|endoftext|>" becomes a special added token.
TokenizerSpec read_gpt2_files(const std::string& encoder_json, const std::string& vocab_bpe);

}  // namespace um::tok
