#include "tokenizer/tiktoken.h"

#include <charconv>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "tokenizer/unicode.h"
#include "tokenizer/vocab_tokenizer.h"

namespace primal {

bool base64_decode(std::string_view in, std::string& out) {
  if (in.size() % 4 != 0) return false;
  auto val = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  for (size_t i = 0; i < in.size(); i += 4) {
    const bool last = i + 4 == in.size();
    int v[4];
    int pad = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = in[i + k];
      if (c == '=' && last && k >= 2) {
        v[k] = 0;
        ++pad;
        continue;
      }
      if (pad > 0) return false;  // data after padding
      v[k] = val(c);
      if (v[k] < 0) return false;
    }
    const uint32_t w = (uint32_t(v[0]) << 18) | (uint32_t(v[1]) << 12) | (uint32_t(v[2]) << 6) | uint32_t(v[3]);
    out.push_back(char(w >> 16));
    if (pad < 2) out.push_back(char((w >> 8) & 0xFF));
    if (pad < 1) out.push_back(char(w & 0xFF));
  }
  return true;
}

std::vector<std::string> parse_tiktoken(std::string_view text, const std::string& origin) {
  std::vector<std::string> tokens;
  size_t pos = 0, line_no = 0;
  while (pos < text.size()) {
    size_t eol = text.find('\n', pos);
    if (eol == std::string_view::npos) eol = text.size();
    std::string_view line = text.substr(pos, eol - pos);
    pos = eol + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    const size_t sp = line.find(' ');
    PRIMAL_CHECK(sp != std::string_view::npos, "{}:{}: expected 'base64 rank', got '{}'", origin, line_no,
                 line.substr(0, 60));
    const std::string_view b64 = line.substr(0, sp), rank_s = line.substr(sp + 1);
    uint64_t rank = 0;
    const auto [end, ec] = std::from_chars(rank_s.data(), rank_s.data() + rank_s.size(), rank);
    PRIMAL_CHECK(ec == std::errc() && end == rank_s.data() + rank_s.size(), "{}:{}: bad rank '{}'", origin,
                 line_no, rank_s.substr(0, 20));
    PRIMAL_CHECK(rank == tokens.size(), "{}:{}: rank {} out of order (expected {})", origin, line_no, rank,
                 tokens.size());
    std::string bytes;
    PRIMAL_CHECK(base64_decode(b64, bytes) && !bytes.empty(), "{}:{}: bad base64 token '{}'", origin, line_no,
                 b64.substr(0, 60));
    tokens.push_back(std::move(bytes));
  }
  PRIMAL_CHECK(!tokens.empty(), "{}: no ranks in this file (is it a tiktoken tokenizer.model?)", origin);
  return tokens;
}

std::vector<std::string> llama3_special_tokens() {
  // Meta's llama3 tokenizer.py: 10 named tokens, then reserved ones up to 256 in all.
  std::vector<std::string> s = {"<|begin_of_text|>",
                                "<|end_of_text|>",
                                "<|reserved_special_token_0|>",
                                "<|reserved_special_token_1|>",
                                "<|reserved_special_token_2|>",
                                "<|reserved_special_token_3|>",
                                "<|start_header_id|>",
                                "<|end_header_id|>",
                                "<|reserved_special_token_4|>",
                                "<|eot_id|>"};
  for (int i = 5; i < 256 - 5; ++i) s.push_back("<|reserved_special_token_" + std::to_string(i) + "|>");
  return s;
}

std::unique_ptr<Tokenizer> Tokenizer::from_tiktoken(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  PRIMAL_CHECK(in, "{}: cannot open", path);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::vector<std::string> ranks = parse_tiktoken(ss.str(), path);

  auto tok = std::make_unique<VocabTokenizer>(VocabKind::BPE);
  Vocab& v = tok->vocab();
  // Stored in the GPT-2 alphabet, like the GGUF and tokenizer.json forms of the same vocabulary.
  for (const std::string& r : ranks) v.add(unicode::bytes_to_gpt2(r), 0.0f, tok_attr::kNormal, path);
  const int32_t first_special = v.n();
  for (const std::string& s : llama3_special_tokens()) v.add(s, 0.0f, tok_attr::kControl, path);

  const PreTokenizerSpec spec = pre_tokenizer_spec("llama3");
  BpeModel& bpe = tok->init_bpe(spec.patterns, path, "llama3");
  bpe.ignore_merges = true;  // tiktoken looks the whole piece up before merging
  bpe.add_merges_from_ranks();
  v.bos = first_special;      // <|begin_of_text|>
  v.eos = first_special + 1;  // <|end_of_text|>
  v.add_bos = true;
  tok->finish("llama3", path, path + " (tiktoken)");
  return tok;
}

}  // namespace primal
