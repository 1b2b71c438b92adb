#include "data_tools/tokenizer/unicode.h"

#include <utf8proc.h>

#include <cstdlib>

#include "ultramem/core/check.h"

namespace um::tok {

int utf8_decode(const unsigned char* s, size_t n, char32_t* cp) {
  unsigned b0 = s[0];
  if (b0 < 0x80) {
    *cp = b0;
    return 1;
  }
  auto cont = [&](size_t i, unsigned lo = 0x80, unsigned hi = 0xBF) { return i < n && s[i] >= lo && s[i] <= hi; };
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    if (!cont(1)) return 0;
    *cp = char32_t(((b0 & 0x1F) << 6) | (s[1] & 0x3F));
    return 2;
  }
  if (b0 >= 0xE0 && b0 <= 0xEF) {
    // E0 needs A0..BF second (no overlongs); ED needs 80..9F (no surrogates).
    unsigned lo = b0 == 0xE0 ? 0xA0 : 0x80, hi = b0 == 0xED ? 0x9F : 0xBF;
    if (!cont(1, lo, hi) || !cont(2)) return 0;
    *cp = char32_t(((b0 & 0x0F) << 12) | ((s[1] & 0x3F) << 6) | (s[2] & 0x3F));
    return 3;
  }
  if (b0 >= 0xF0 && b0 <= 0xF4) {
    // F0 needs 90..BF second (no overlongs); F4 needs 80..8F (nothing above U+10FFFF).
    unsigned lo = b0 == 0xF0 ? 0x90 : 0x80, hi = b0 == 0xF4 ? 0x8F : 0xBF;
    if (!cont(1, lo, hi) || !cont(2) || !cont(3)) return 0;
    *cp = char32_t(((b0 & 0x07) << 18) | ((s[1] & 0x3F) << 12) | ((s[2] & 0x3F) << 6) | (s[3] & 0x3F));
    return 4;
  }
  return 0;  // a continuation byte, C0/C1 (overlong) or F5..FF
}

size_t utf8_valid_prefix(std::string_view text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  size_t n = text.size(), i = 0;
  while (i < n) {
    if (s[i] < 0x80) {
      ++i;
      continue;
    }
    char32_t cp;
    int len = utf8_decode(s + i, n - i, &cp);
    if (len == 0) return i;
    i += size_t(len);
  }
  return n;
}

CharClass char_class(char32_t cp) {
  if (cp < 128) return kAsciiClass[cp];
  if (cp == 0x85) return CharClass::kSpace;  // NEL: White_Space, category Cc
  switch (utf8proc_category(utf8proc_int32_t(cp))) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
      return CharClass::kLetter;
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_NO:
      return CharClass::kNumber;
    case UTF8PROC_CATEGORY_ZS:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP:
      return CharClass::kSpace;
    default:
      return CharClass::kOther;
  }
}

static void nfc_stretch(std::string_view text, std::string& out) {
  utf8proc_uint8_t* mapped = nullptr;
  utf8proc_ssize_t len = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                                      utf8proc_ssize_t(text.size()), &mapped, utf8proc_option_t(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  if (len < 0) throw Error("NFC normalization", "well-formed UTF-8", utf8proc_errmsg(len));
  out.append(reinterpret_cast<const char*>(mapped), size_t(len));
  std::free(mapped);
}

void nfc_append(std::string_view text, std::string& out) {
  // Code points below U+0300 have NFC_Quick_Check=Yes and never compose with their neighbours, and
  // their UTF-8 lead bytes are all below 0xCC. An ASCII character is a starter that nothing before it
  // composes across, so cutting the text right before one splits NFC into independent pieces: only
  // the stretches between ASCII characters that hold a byte >= 0xCC go through utf8proc.
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  size_t n = text.size(), i = 0;
  while (i < n) {
    size_t p = i;
    while (p < n && s[p] < 0xCC) ++p;
    if (p == n) break;
    size_t start = p;
    while (start > i && s[start - 1] >= 0x80) --start;
    if (start > i) --start;  // include the ASCII starter itself: a combining mark after it composes with it
    size_t end = p + 1;
    while (end < n && s[end] >= 0x80) ++end;
    out.append(text.substr(i, start - i));
    nfc_stretch(text.substr(start, end - start), out);
    i = end;
  }
  out.append(text.substr(i));
}

}  // namespace um::tok
