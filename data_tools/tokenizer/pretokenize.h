// The GPT-2 pre-tokenization regex, matched by hand over code points:
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// Hugging Face's ByteLevel pre-tokenizer (use_regex: true) and tiktoken's "gpt2" encoding both split
// text with it; BPE then runs on each piece separately.
#pragma once
#include <cstddef>
#include <string_view>

namespace um::tok {

// The end (exclusive byte offset) of the regex match that starts at `start` in `text`, which must be
// well-formed UTF-8 with start < text.size(). Every position starts a match, so repeatedly calling
// this from the previous end splits the whole text.
size_t pretoken_end(std::string_view text, size_t start);

// Calls f(piece) for every pre-token of `text` in order.
template <typename F>
void for_each_pretoken(std::string_view text, F&& f) {
  for (size_t i = 0; i < text.size();) {
    size_t end = pretoken_end(text, i);
    f(text.substr(i, end - i));
    i = end;
  }
}

}  // namespace um::tok
