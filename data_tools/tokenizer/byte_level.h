// GPT-2's byte-level alphabet: every byte is given a printable code point (printable Latin-1 bytes map
// to themselves, the other 68 to U+0100 onwards, so the space 0x20 becomes 'Ġ' U+0120), and vocabulary
// strings are written in that alphabet. BPE therefore never sees an unknown symbol.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace um::tok {

// The code point that stands for each byte.
const std::array<char32_t, 256>& byte_to_unicode();

// The UTF-8 string of the single-byte token for byte b (e.g. "Ġ" for 0x20).
std::string byte_token_string(uint8_t b);

// Maps a vocabulary string written in the byte-level alphabet back to the bytes it stands for.
// Returns false (out unchanged) when a character is outside the alphabet: such strings (added tokens
// like "<|padding|>" are inside it, NeoX's runs of raw spaces are not) decode to their own UTF-8 bytes,
// as in Hugging Face's ByteLevel decoder.
bool byte_level_decode(std::string_view token, std::string& out);

}  // namespace um::tok
