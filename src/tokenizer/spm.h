// SentencePiece-style BPE on scores (llama.cpp's llm_tokenizer_spm, Llama 2 / Phi-3 / Baichuan).
//
// The text (spaces already escaped to "▁") starts as one symbol per UTF-8 character, where a
// character is as long as its lead byte says (clipped at the end of the text, never validated, as
// in llama.cpp). Every adjacent pair whose concatenation is a token is a candidate ranked by that
// token's score; the best (highest score, then leftmost) is merged until none is left. A final
// symbol that is a token gives its id; one that is not is spelled with byte tokens: <0xXX>, else
// the one-byte token, else <unk> (llama.cpp would abort there; a vocabulary without byte tokens
// should not crash on bytes it cannot spell).
//
// llama.cpp also keeps a "rev_merge" table to re-split a non-token symbol into the two symbols it
// was merged from. It never fires: a symbol is only ever merged into a token's text, so a non-token
// symbol is always a single character. Bytes are what it comes down to either way.
#pragma once
#include <cstdint>
#include <string_view>
#include <vector>

#include "tokenizer/vocab.h"

namespace primal {

void spm_encode(const Vocab& v, std::string_view text, std::vector<int32_t>& out);

// The byte token for b (<0xXX>, else the one-character token), or -1.
int32_t spm_byte_token(const Vocab& v, uint8_t b);

}  // namespace primal
