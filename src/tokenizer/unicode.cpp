#include "tokenizer/unicode.h"

#include <array>

namespace primal::unicode {

namespace {

bool is_cont(uint8_t b) { return (b & 0xC0) == 0x80; }

struct Gpt2Alphabet {
  std::array<uint32_t, 256> cpt{};
  std::array<std::string, 256> utf8;
  std::array<int16_t, 324> byte_of{};  // code points 0..323 cover the whole alphabet

  Gpt2Alphabet() {
    byte_of.fill(-1);
    // Printable Latin-1 bytes stand for themselves ('!'..'~', '¡'..'¬', '®'..'ÿ'); the others
    // (controls, space, DEL, NBSP, soft hyphen) take U+0100.. in byte order.
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      cpt[b] = printable ? uint32_t(b) : next++;
      utf8[b] = to_utf8(cpt[b]);
      byte_of[cpt[b]] = int16_t(b);
    }
  }
};

const Gpt2Alphabet& alphabet() {
  static const Gpt2Alphabet a;
  return a;
}

}  // namespace

uint32_t decode_one(std::string_view s, size_t& pos) {
  const size_t n = s.size();
  const uint8_t b0 = uint8_t(s[pos]);
  if (b0 < 0x80) {
    pos += 1;
    return b0;
  }
  if ((b0 & 0x40) == 0) {  // lone continuation byte
    pos += 1;
    return kReplacement;
  }
  if ((b0 & 0x20) == 0) {
    if (pos + 1 < n && is_cont(uint8_t(s[pos + 1]))) {
      const uint32_t c = (uint32_t(b0 & 0x1F) << 6) | (uint8_t(s[pos + 1]) & 0x3F);
      pos += 2;
      return c;
    }
  } else if ((b0 & 0x10) == 0) {
    if (pos + 2 < n && is_cont(uint8_t(s[pos + 1])) && is_cont(uint8_t(s[pos + 2]))) {
      const uint32_t c = (uint32_t(b0 & 0x0F) << 12) | (uint32_t(uint8_t(s[pos + 1]) & 0x3F) << 6) |
                         (uint8_t(s[pos + 2]) & 0x3F);
      pos += 3;
      return c;
    }
  } else if ((b0 & 0x08) == 0) {
    if (pos + 3 < n && is_cont(uint8_t(s[pos + 1])) && is_cont(uint8_t(s[pos + 2])) &&
        is_cont(uint8_t(s[pos + 3]))) {
      const uint32_t c = (uint32_t(b0 & 0x07) << 18) | (uint32_t(uint8_t(s[pos + 1]) & 0x3F) << 12) |
                         (uint32_t(uint8_t(s[pos + 2]) & 0x3F) << 6) | (uint8_t(s[pos + 3]) & 0x3F);
      if (c <= 0x10FFFF) {
        pos += 4;
        return c;
      }
    }
  }
  pos += 1;
  return kReplacement;
}

std::vector<uint32_t> decode(std::string_view text) {
  std::vector<uint32_t> out;
  out.reserve(text.size());
  size_t pos = 0;
  while (pos < text.size()) out.push_back(decode_one(text, pos));
  return out;
}

void append_utf8(std::string& out, uint32_t c) {
  if (c <= 0x7F) {
    out.push_back(char(c));
  } else if (c <= 0x7FF) {
    out.push_back(char(0xC0 | (c >> 6)));
    out.push_back(char(0x80 | (c & 0x3F)));
  } else if (c <= 0xFFFF) {
    out.push_back(char(0xE0 | (c >> 12)));
    out.push_back(char(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(char(0x80 | (c & 0x3F)));
  } else if (c <= 0x10FFFF) {
    out.push_back(char(0xF0 | (c >> 18)));
    out.push_back(char(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(char(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(char(0x80 | (c & 0x3F)));
  } else {
    append_utf8(out, kReplacement);  // never produced by decode(); keeps the output valid
  }
}

std::string to_utf8(uint32_t cpt) {
  std::string s;
  append_utf8(s, cpt);
  return s;
}

std::string sanitize(std::string_view text) {
  // Re-encoding every code point keeps well-formed text byte for byte, turns each invalid byte
  // into U+FFFD and writes overlong forms in their shortest form, exactly as llama.cpp does.
  std::string out;
  out.reserve(text.size() + 8);
  size_t pos = 0;
  while (pos < text.size()) append_utf8(out, decode_one(text, pos));
  return out;
}

bool is_whitespace(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

uint32_t byte_to_cpt(uint8_t b) { return alphabet().cpt[b]; }
const std::string& byte_to_utf8(uint8_t b) { return alphabet().utf8[b]; }

int cpt_to_byte(uint32_t cpt) {
  return cpt < alphabet().byte_of.size() ? alphabet().byte_of[cpt] : -1;
}

std::string bytes_to_gpt2(std::string_view raw) {
  std::string out;
  out.reserve(raw.size() * 2);
  for (const char c : raw) out += byte_to_utf8(uint8_t(c));
  return out;
}

bool gpt2_to_bytes(std::string_view text, std::string& out) {
  bool ok = true;
  size_t pos = 0;
  while (pos < text.size()) {
    const int b = cpt_to_byte(decode_one(text, pos));
    if (b < 0) {
      ok = false;
      continue;
    }
    out.push_back(char(b));
  }
  return ok;
}

}  // namespace primal::unicode
