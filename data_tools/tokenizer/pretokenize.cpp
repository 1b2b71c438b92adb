#include "data_tools/tokenizer/pretokenize.h"

#include "data_tools/tokenizer/unicode.h"

namespace um::tok {

namespace {

struct ClassedChar {
  CharClass cls;
  size_t len;
};

inline ClassedChar class_at(const unsigned char* s, size_t n, size_t i) {
  if (s[i] < 0x80) return {kAsciiClass[s[i]], 1};
  char32_t cp;
  int len = utf8_decode(s + i, n - i, &cp);
  if (len == 0) return {CharClass::kOther, 1};  // callers pass valid UTF-8; stay total anyway
  return {char_class(cp), size_t(len)};
}

inline bool is_contraction(const unsigned char* s, size_t n, size_t i, size_t* end) {
  if (s[i] != '\'' || i + 1 >= n) return false;
  unsigned char c = s[i + 1];
  if (c == 's' || c == 't' || c == 'm' || c == 'd') {
    *end = i + 2;
    return true;
  }
  if (i + 2 < n) {
    unsigned char c2 = s[i + 2];
    if ((c == 'r' && c2 == 'e') || (c == 'v' && c2 == 'e') || (c == 'l' && c2 == 'l')) {
      *end = i + 3;
      return true;
    }
  }
  return false;
}

}  // namespace

size_t pretoken_end(std::string_view text, size_t start) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();

  // 's|'t|'re|'ve|'m|'ll|'d : tried first at every position, case-sensitive.
  size_t end;
  if (is_contraction(s, n, start, &end)) return end;

  // ' ?\p{L}+' | ' ?\p{N}+' | ' ?[^\s\p{L}\p{N}]+' : an optional U+0020, then a run of one class.
  ClassedChar first = class_at(s, n, start);
  CharClass run = first.cls;
  size_t i = start + first.len;
  if (s[start] == ' ' && start + 1 < n) {
    ClassedChar next = class_at(s, n, start + 1);
    if (next.cls != CharClass::kSpace) {
      run = next.cls;
      i = start + 1 + next.len;
    }
  }
  if (run != CharClass::kSpace) {
    while (i < n) {
      ClassedChar c = class_at(s, n, i);
      if (c.cls != run) break;
      i += c.len;
    }
    return i;
  }

  // '\s+(?!\S)' : the whitespace run up to the end of the text, or all of it but its last character
  // when something else follows (that character then prefixes the next word); '\s+' : a lone
  // whitespace character before a non-space.
  size_t last = start;
  while (i < n) {
    ClassedChar c = class_at(s, n, i);
    if (c.cls != CharClass::kSpace) break;
    last = i;
    i += c.len;
  }
  if (i == n) return n;
  return last > start ? last : i;
}

}  // namespace um::tok
