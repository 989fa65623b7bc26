// WordPiece (BERT; llama.cpp's llm_tokenizer_wpm), for the bert-bge test vocabulary.
//
// Normalization as llama.cpp does it: with strip_accents each code point is replaced by the first
// code point of its NFD decomposition (table generated from Python's unicodedata by
// tools/gen_unicode_nfd.py) and combining marks (\p{M}) are dropped; NUL, U+FFFD and other \p{C}
// characters are dropped; whitespace ends a word; punctuation, ASCII symbols and CJK ideographs
// are words of their own; lowercasing uses the C library's Unicode case map (glibc C.UTF-8).
// Then each word, prefixed with "▁", is cut greedily into the longest vocabulary entries; a word
// that cannot be cut completely becomes [UNK].
#pragma once
#include <cstdint>
#include <string_view>
#include <vector>

#include "tokenizer/vocab.h"

namespace primal {

void wpm_encode(const Vocab& v, bool lowercase, bool strip_accents, std::string_view text,
                std::vector<int32_t>& out);

// The first code point of cpt's NFD form (cpt itself when it does not decompose).
uint32_t nfd_first(uint32_t cpt);

}  // namespace primal
