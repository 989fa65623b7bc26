// UTF-8 and the GPT-2 byte <-> unicode mapping, with llama.cpp's treatment of bad input.
//
// Decoding follows llama.cpp's unicode_cpts_from_utf8: the lead byte fixes the length
// (0xxxxxxx 1, 110xxxxx 2, 1110xxxx 3, 11110xxx 4); when the continuation bytes are missing or
// not 10xxxxxx, or the lead byte is a lone continuation byte or 0xF8..0xFF, that one byte becomes
// U+FFFD and decoding resumes at the next byte. Overlong forms and surrogates decode to the value
// they spell (0xC0 0x80 -> U+0000, 0xED 0xA0 0x80 -> U+D800), as in llama.cpp. One deliberate
// difference: a 4-byte form above U+10FFFF (0xF4 0x90.., 0xF5..0xF7) makes llama.cpp throw when it
// re-encodes the text; here its lead byte is treated as invalid (U+FFFD) so that bad text never
// raises.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace primal::unicode {

constexpr uint32_t kReplacement = 0xFFFD;

// Length of the UTF-8 sequence a lead byte announces (1 for continuation and 0x80..0xBF), as
// llama.cpp's unicode_len_utf8: the SPM and BPE symbol splitters use this rule, unvalidated.
inline size_t utf8_len(uint8_t lead) {
  static constexpr uint8_t lookup[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return lookup[lead >> 4];
}

// Decode one code point at text[pos], advancing pos. Invalid input: U+FFFD, pos += 1.
uint32_t decode_one(std::string_view text, size_t& pos);
// The whole text as code points (see the rules above).
std::vector<uint32_t> decode(std::string_view text);
// Append the UTF-8 form of cpt (surrogates as their 3-byte form, as llama.cpp does).
void append_utf8(std::string& out, uint32_t cpt);
std::string to_utf8(uint32_t cpt);
// decode() then re-encode: what llama.cpp's BPE path actually feeds to the merges.
std::string sanitize(std::string_view text);

// Unicode White_Space (what the reference regex engines mean by \s).
bool is_whitespace(uint32_t cpt);

// GPT-2 byte-level alphabet: the printable bytes map to themselves, the other 68 bytes to
// U+0100.. in byte order (so ' ' -> 'Ġ' U+0120, '\n' -> 'Ċ' U+010A).
uint32_t byte_to_cpt(uint8_t b);
const std::string& byte_to_utf8(uint8_t b);
// Inverse of byte_to_cpt: the byte, or -1 for a code point outside the alphabet.
int cpt_to_byte(uint32_t cpt);
// Byte-level encode every byte of raw (each byte becomes one GPT-2 alphabet character).
std::string bytes_to_gpt2(std::string_view raw);
// Decode a GPT-2 alphabet string back to bytes; false if it holds a character outside it.
bool gpt2_to_bytes(std::string_view text, std::string& out);

}  // namespace primal::unicode
