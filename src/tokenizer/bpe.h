// Byte-level BPE on one pre-tokenized word (llama.cpp's llm_tokenizer_bpe_session, HF's BPE model,
// tiktoken's byte-pair merge: all three give the same ids).
//
// A word starts as one symbol per byte (the GPT-2 alphabet character of that byte). The adjacent
// pair with the lowest merge rank is merged, the leftmost first among equal ranks, until no pair
// has a rank. A final symbol that is a vocabulary entry gives its id; one that is not (a merge
// result missing from the vocabulary, or a byte whose character is not a token) falls back as
// llama.cpp does: each byte of its GPT-2 text that is a one-byte token, the rest dropped.
//
// Symbols are interned as ids (vocabulary ids first, then merge results that are not tokens), so a
// merge test is one hash lookup on an id pair. Results are cached per word: real text repeats its
// words, and the cache is what makes 1 MB of code tokenize in a fraction of a second.
#pragma once
#include <array>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/vocab.h"

namespace primal {

class BpeModel {
 public:
  // `v` must outlive the model (it lives in the same tokenizer object).
  explicit BpeModel(const Vocab& v);

  // Merge rule `left right` at `rank` (GGUF merges / tokenizer.json merges, in file order).
  // The first rule for a pair wins, as llama.cpp's emplace does.
  void add_merge(std::string_view left, std::string_view right, int32_t rank);
  // tiktoken: every token whose bytes split into two tokens is the merge of that pair, ranked by
  // its own id (the rank in the file), which is tiktoken's "merge the lowest-rank pair" rule.
  void add_merges_from_ranks();
  size_t n_merges() const { return merges_.size(); }

  // A word that is itself a token is emitted whole before any merge (Llama 3 / tiktoken).
  bool ignore_merges = false;

  // Append the ids of one raw (UTF-8) word.
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;

 private:
  int32_t symbol(std::string_view gpt2_text) const;  // vocab id, interned id, or -1
  int32_t intern(const std::string& gpt2_text);
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;

  struct Merge {
    int32_t rank;
    int32_t result;  // symbol id of left+right
  };
  static uint64_t key(int32_t l, int32_t r) { return (uint64_t(uint32_t(l)) << 32) | uint32_t(r); }

  const Vocab& vocab_;
  StringMap<int32_t> extra_id_;         // merge results that are not tokens
  std::vector<std::string> extra_text_;                // ids vocab.n() + k
  std::array<int32_t, 256> byte_symbol_{};             // symbol of each raw byte, -1 when none
  std::unordered_map<uint64_t, Merge> merges_;

  mutable std::mutex cache_mu_;
  mutable StringMap<std::vector<int32_t>> cache_;
};

}  // namespace primal
