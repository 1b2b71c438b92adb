// UTF-8 decoding and the three Unicode services a byte-level BPE tokenizer needs: the character classes
// of the GPT-2 pre-tokenization regex (\p{L}, \p{N}, \s), and NFC normalization. Classes and NFC come from
// utf8proc (Unicode 15 with utf8proc 2.8), never from hand-written tables.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace um::tok {

// Decodes the code point starting at s[0] (n > 0 bytes available). Returns its length in bytes (1-4) and
// stores it in *cp, or returns 0 when s does not start a well-formed UTF-8 sequence (RFC 3629: no
// overlong forms, no surrogates U+D800-DFFF, nothing above U+10FFFF, no truncated sequence).
int utf8_decode(const unsigned char* s, size_t n, char32_t* cp);

// The length of the longest prefix of s that is well-formed UTF-8.
size_t utf8_valid_prefix(std::string_view s);

// What the pre-tokenization regex distinguishes. kSpace is Unicode White_Space, which is what \s means
// in the reference regex engines (Oniguruma for Hugging Face tokenizers, Rust regex for tiktoken):
// U+0009-000D, U+0085 and the Zs, Zl, Zp categories.
enum class CharClass : uint8_t { kLetter, kNumber, kSpace, kOther };

CharClass char_class(char32_t cp);

// char_class for ASCII, as a table the pre-tokenizer's hot loop indexes directly.
inline constexpr std::array<CharClass, 128> kAsciiClass = [] {
  std::array<CharClass, 128> t{};
  for (int c = 0; c < 128; ++c) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
      t[c] = CharClass::kLetter;
    else if (c >= '0' && c <= '9')
      t[c] = CharClass::kNumber;
    else if ((c >= 0x09 && c <= 0x0D) || c == ' ')
      t[c] = CharClass::kSpace;
    else
      t[c] = CharClass::kOther;
  }
  return t;
}();

// Appends the NFC form of `text` (well-formed UTF-8) to out. Stretches that hold no code point at or
// above U+0300 are NFC already and are copied without calling utf8proc.
void nfc_append(std::string_view text, std::string& out);

}  // namespace um::tok
