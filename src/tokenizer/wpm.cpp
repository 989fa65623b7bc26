#include "tokenizer/wpm.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <locale.h>
#include <pcre2.h>
#include <wctype.h>

#include <algorithm>
#include <string>

#include "core/error.h"
#include "tokenizer/unicode.h"

namespace primal {

namespace {

struct NfdRange {
  uint32_t first, last, nfd;
};
constexpr NfdRange kNfd[] = {
#include "tokenizer/unicode_nfd.inc"
};

enum Cat { kOther, kMark, kPunct, kSymbol, kControl };

// General category of one code point, by asking PCRE2's Unicode tables.
class Categories {
 public:
  Categories() {
    int err = 0;
    PCRE2_SIZE off = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(R"((\p{M})|(\p{P})|(\p{S})|(\p{C}))"), PCRE2_ZERO_TERMINATED,
                          PCRE2_UTF | PCRE2_UCP | PCRE2_ANCHORED, &err, &off, nullptr);
    PRIMAL_CHECK(code_, "WordPiece: cannot compile the category pattern");
  }
  ~Categories() { pcre2_code_free(code_); }

  Cat of(uint32_t cpt) const {
    if (cpt >= 0xD800 && cpt <= 0xDFFF) return kControl;  // surrogates: Cs
    const std::string s = unicode::to_utf8(cpt);
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(code_, nullptr);
    Cat c = kOther;
    if (pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), 0, 0, md, nullptr) > 0) {
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      for (int g = 1; g <= 4; ++g) {
        if (ov[2 * g] != PCRE2_UNSET) {
          c = Cat(g);
          break;
        }
      }
    }
    pcre2_match_data_free(md);
    return c;
  }

 private:
  pcre2_code* code_ = nullptr;
};

uint32_t to_lower(uint32_t cpt) {
  static const locale_t loc = newlocale(LC_CTYPE_MASK, "C.UTF-8", locale_t(0));
  if (cpt < 0x80) return cpt >= 'A' && cpt <= 'Z' ? cpt + 32 : cpt;
  return loc ? uint32_t(towlower_l(wint_t(cpt), loc)) : cpt;
}

bool is_chinese_char(uint32_t c) {
  // the ranges of HF's BertPreTokenizer (0x2B920 as in its Rust source)
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
         (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

}  // namespace

uint32_t nfd_first(uint32_t cpt) {
  const NfdRange* end = kNfd + sizeof(kNfd) / sizeof(kNfd[0]);
  const NfdRange* it = std::upper_bound(kNfd, end, cpt, [](uint32_t c, const NfdRange& r) { return c < r.first; });
  if (it == kNfd) return cpt;
  --it;
  return cpt <= it->last ? it->nfd : cpt;
}

void wpm_encode(const Vocab& v, bool lowercase, bool strip_accents, std::string_view text,
                std::vector<int32_t>& out) {
  static const Categories cats;
  // words of the normalized text
  std::vector<std::string> words(1);
  for (uint32_t cpt : unicode::decode(text)) {
    if (strip_accents) cpt = nfd_first(cpt);
    if (unicode::is_whitespace(cpt)) {
      if (!words.back().empty()) words.emplace_back();
      continue;
    }
    const Cat cat = cats.of(cpt);
    if (cpt == 0 || cpt == unicode::kReplacement || cat == kControl) continue;
    if (strip_accents && cat == kMark) continue;
    const std::string s = unicode::to_utf8(lowercase ? to_lower(cpt) : cpt);
    if (cat == kPunct || (cpt < 0x7F && cat == kSymbol) || is_chinese_char(cpt)) {
      if (!words.back().empty()) words.emplace_back();
      words.back() = s;
      words.emplace_back();
    } else {
      words.back() += s;
    }
  }

  for (const std::string& word : words) {
    if (word.empty()) continue;
    const std::string w = "\xE2\x96\x81" + word;  // "▁" marks the start of a word
    const size_t n = w.size();
    const size_t before = out.size();
    for (size_t i = 0; i < n;) {
      // longest entry starting at i
      size_t j = std::min(n, i + v.max_token_len + 1);
      int32_t id = -1;
      for (; j > i; --j) {
        id = v.find(std::string_view(w).substr(i, j - i));
        if (id >= 0) break;
      }
      if (id < 0) {  // the word cannot be spelled: drop what was found
        out.resize(before);
        break;
      }
      out.push_back(id);
      i = j;
    }
    if (out.size() == before && v.unk >= 0) out.push_back(v.unk);
  }
}

}  // namespace primal
