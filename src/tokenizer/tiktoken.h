// tiktoken rank files (Meta's Llama 3 tokenizer.model): one "base64(token bytes) rank" per line,
// ranks 0..n-1 in order. The token's rank is both its id and its merge priority.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace primal {

// The token byte strings, index = rank. Throws naming `origin` and the line for a malformed line,
// bad base64, or a rank out of order.
std::vector<std::string> parse_tiktoken(std::string_view text, const std::string& origin);

// Standard base64 (RFC 4648, '=' padding). False on any other character or a bad length.
bool base64_decode(std::string_view in, std::string& out);

// Llama 3's 256 special tokens, which follow the ranks (<|begin_of_text|> is n_ranks + 0).
std::vector<std::string> llama3_special_tokens();

}  // namespace primal
