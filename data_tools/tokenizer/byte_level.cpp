#include "data_tools/tokenizer/byte_level.h"

#include <unordered_map>

#include "data_tools/tokenizer/unicode.h"

namespace um::tok {

static std::array<char32_t, 256> make_byte_to_unicode() {
  std::array<char32_t, 256> map{};
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    map[b] = printable ? char32_t(b) : next++;
  }
  return map;
}

const std::array<char32_t, 256>& byte_to_unicode() {
  static const std::array<char32_t, 256> map = make_byte_to_unicode();
  return map;
}

static void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else {  // the alphabet stays below U+0144
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

std::string byte_token_string(uint8_t b) {
  std::string s;
  append_utf8(s, byte_to_unicode()[b]);
  return s;
}

bool byte_level_decode(std::string_view token, std::string& out) {
  static const std::unordered_map<char32_t, uint8_t> inverse = [] {
    std::unordered_map<char32_t, uint8_t> m;
    for (int b = 0; b < 256; ++b) m[byte_to_unicode()[b]] = uint8_t(b);
    return m;
  }();
  std::string bytes;
  const auto* s = reinterpret_cast<const unsigned char*>(token.data());
  for (size_t i = 0; i < token.size();) {
    char32_t cp;
    int len = utf8_decode(s + i, token.size() - i, &cp);
    if (len == 0) return false;
    auto it = inverse.find(cp);
    if (it == inverse.end()) return false;
    bytes += char(it->second);
    i += size_t(len);
  }
  out += bytes;
  return true;
}

}  // namespace um::tok
