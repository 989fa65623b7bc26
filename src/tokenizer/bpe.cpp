#include "tokenizer/bpe.h"

#include <queue>

#include "tokenizer/unicode.h"

namespace primal {

namespace {
constexpr size_t kMaxCachedWords = 1 << 18;  // a bound on memory for endless distinct words
}  // namespace

BpeModel::BpeModel(const Vocab& v) : vocab_(v) {
  for (int b = 0; b < 256; ++b) byte_symbol_[b] = vocab_.find(unicode::byte_to_utf8(uint8_t(b)));
}

int32_t BpeModel::symbol(std::string_view t) const {
  const int32_t id = vocab_.find(t);
  if (id >= 0) return id;
  auto it = extra_id_.find(t);
  return it == extra_id_.end() ? -1 : it->second;
}

int32_t BpeModel::intern(const std::string& t) {
  const int32_t id = symbol(t);
  if (id >= 0) return id;
  const int32_t nid = vocab_.n() + int32_t(extra_text_.size());
  extra_text_.push_back(t);
  extra_id_.emplace(t, nid);
  return nid;
}

void BpeModel::add_merge(std::string_view left, std::string_view right, int32_t rank) {
  if (merges_.empty()) merges_.reserve(size_t(vocab_.n()) * 2);
  const int32_t l = intern(std::string(left));
  const int32_t r = intern(std::string(right));
  const int32_t m = intern(std::string(left) + std::string(right));
  merges_.emplace(key(l, r), Merge{rank, m});
}

void BpeModel::add_merges_from_ranks() {
  // Splitting the bytes at k is splitting the GPT-2 text at its k-th character boundary.
  merges_.reserve(merges_.size() + 3 * size_t(vocab_.n()));
  for (int32_t id = 0; id < vocab_.n(); ++id) {
    if (!(vocab_.attr[id] & tok_attr::kNormal)) continue;
    const std::string_view t = vocab_.text[id];
    for (size_t k = unicode::utf8_len(uint8_t(t[0])); k < t.size(); k += unicode::utf8_len(uint8_t(t[k]))) {
      const int32_t l = vocab_.find(t.substr(0, k));
      if (l < 0) continue;
      const int32_t r = vocab_.find(t.substr(k));
      if (r >= 0) merges_.emplace(key(l, r), Merge{id, id});
    }
  }
}

void BpeModel::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges) {
    const int32_t id = vocab_.find(unicode::bytes_to_gpt2(word));
    if (id >= 0) {
      out.push_back(id);
      return;
    }
  }
  {
    std::lock_guard<std::mutex> lock(cache_mu_);
    auto it = cache_.find(word);
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> ids;
  merge_word(word, ids);
  out.insert(out.end(), ids.begin(), ids.end());
  std::lock_guard<std::mutex> lock(cache_mu_);
  if (cache_.size() >= kMaxCachedWords) cache_.clear();
  cache_.emplace(std::string(word), std::move(ids));
}

void BpeModel::merge_word(std::string_view word, std::vector<int32_t>& out) const {
  struct Sym {
    int32_t id;     // symbol id, -1 when the text is no symbol at all
    uint32_t start; // bytes of the word it covers
    uint32_t len;   // 0 once merged into its left neighbour
    int32_t prev, next;
  };
  struct Cand {
    int32_t rank, left, right, lid, rid, result;
  };
  // lowest rank first, then leftmost (llama.cpp's llm_bigram_bpe::comparator)
  auto worse = [](const Cand& a, const Cand& b) {
    return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
  };
  std::priority_queue<Cand, std::vector<Cand>, decltype(worse)> queue(worse);

  const int32_t n = int32_t(word.size());
  std::vector<Sym> syms(n);
  for (int32_t i = 0; i < n; ++i) {
    syms[i] = {byte_symbol_[uint8_t(word[i])], uint32_t(i), 1, i - 1, i + 1 < n ? i + 1 : -1};
  }
  auto push = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0 || syms[l].id < 0 || syms[r].id < 0) return;
    auto it = merges_.find(key(syms[l].id, syms[r].id));
    if (it == merges_.end()) return;
    queue.push({it->second.rank, l, r, syms[l].id, syms[r].id, it->second.result});
  };
  for (int32_t i = 0; i + 1 < n; ++i) push(i, i + 1);

  while (!queue.empty()) {
    const Cand c = queue.top();
    queue.pop();
    Sym& l = syms[c.left];
    Sym& r = syms[c.right];
    // stale: one side was merged away or has changed since the pair was queued
    if (l.len == 0 || r.len == 0 || l.next != c.right || l.id != c.lid || r.id != c.rid) continue;
    l.id = c.result;
    l.len += r.len;
    r.len = 0;
    l.next = r.next;
    if (r.next >= 0) syms[r.next].prev = c.left;
    push(l.prev, c.left);
    push(c.left, l.next);
  }

  for (int32_t i = 0; i >= 0 && i < n; i = syms[i].next) {
    const Sym& s = syms[i];
    if (s.id >= 0 && s.id < vocab_.n()) {
      out.push_back(s.id);
      continue;
    }
    // Not a token: llama.cpp tries every byte of the symbol's GPT-2 text as a one-byte token.
    const std::string text = unicode::bytes_to_gpt2(word.substr(s.start, s.len));
    for (const char ch : text) {
      const int32_t id = vocab_.find(std::string_view(&ch, 1));
      if (id >= 0) out.push_back(id);
    }
  }
}

}  // namespace primal
