#include "tokenizer/spm.h"

#include <algorithm>
#include <queue>

#include "tokenizer/unicode.h"

namespace primal {

int32_t spm_byte_token(const Vocab& v, uint8_t b) {
  static const char* hex = "0123456789ABCDEF";
  const char buf[6] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>'};
  const int32_t id = v.find(std::string_view(buf, 6));
  if (id >= 0) return id;
  const char c = char(b);
  return v.find(std::string_view(&c, 1));
}

void spm_encode(const Vocab& v, std::string_view text, std::vector<int32_t>& out) {
  struct Sym {
    uint32_t start, len;  // bytes of text; len 0 once merged into the left neighbour
    int32_t prev, next;
  };
  struct Cand {
    float score;
    int32_t left, right;
    uint32_t size;  // bytes of the merged text, to spot stale candidates
  };
  // highest score first, then leftmost (llama.cpp's llm_bigram_spm::comparator)
  auto worse = [](const Cand& a, const Cand& b) {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  };
  std::priority_queue<Cand, std::vector<Cand>, decltype(worse)> queue(worse);

  std::vector<Sym> syms;
  syms.reserve(text.size());
  for (size_t off = 0; off < text.size();) {
    const size_t len = std::min(unicode::utf8_len(uint8_t(text[off])), text.size() - off);
    const int32_t i = int32_t(syms.size());
    off += len;
    syms.push_back({uint32_t(off - len), uint32_t(len), i - 1, off == text.size() ? -1 : i + 1});
  }
  auto push = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    const std::string_view merged = text.substr(syms[l].start, syms[l].len + syms[r].len);
    const int32_t id = v.find(merged);
    if (id < 0) return;
    queue.push({v.score[id], l, r, uint32_t(merged.size())});
  };
  for (int32_t i = 1; i < int32_t(syms.size()); ++i) push(i - 1, i);

  while (!queue.empty()) {
    const Cand c = queue.top();
    queue.pop();
    Sym& l = syms[c.left];
    Sym& r = syms[c.right];
    if (l.len == 0 || r.len == 0 || l.len + r.len != c.size) continue;
    l.len += r.len;
    r.len = 0;
    l.next = r.next;
    if (r.next >= 0) syms[r.next].prev = c.left;
    push(l.prev, c.left);
    push(c.left, l.next);
  }

  for (int32_t i = syms.empty() ? -1 : 0; i >= 0; i = syms[i].next) {
    const std::string_view piece = text.substr(syms[i].start, syms[i].len);
    const int32_t id = v.find(piece);
    if (id >= 0) {
      out.push_back(id);
      continue;
    }
    for (const char ch : piece) {
      const int32_t b = spm_byte_token(v, uint8_t(ch));
      if (b >= 0) {
        out.push_back(b);
      } else if (v.unk >= 0) {
        out.push_back(v.unk);
      }
    }
  }
}

}  // namespace primal
