// Regex pre-tokenizers: the text is cut into words before BPE, by the regexes of each vocabulary
// (tokenizer.ggml.pre in GGUF, the Split / ByteLevel pre_tokenizer of tokenizer.json).
//
// The patterns are the original ones from the tokenizers' tokenizer.json, run by PCRE2 with
// PCRE2_UTF | PCRE2_UCP (JIT-compiled when available). Several patterns apply in sequence, as
// llama.cpp's unicode_regex_split and HF's Sequence of Split(behavior=Isolated) do: each pattern
// cuts every piece left by the previous one into its matches and the gaps between them, and a
// pattern sees only the piece it cuts (lookaheads stop at the piece's end).
//
// The subject PCRE2 sees is the text decoded as llama.cpp decodes it (unicode.h), with two
// substitutions that keep every category the patterns ask about: every non-ASCII White_Space code
// point becomes U+000B (llama.cpp does the same, so that \s covers U+0085 and a literal U+3000 in a
// class does not), and surrogates (which PCRE2 refuses) become the private-use U+E000 (both \p{C}).
// The words returned are the original code points, UTF-8 encoded.
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace primal {

class Regex;

class PreTokenizer {
 public:
  PreTokenizer();
  // Compiles the patterns; a pattern PCRE2 rejects gives an Error naming it (`origin` says where
  // it came from, e.g. the tokenizer.json path).
  PreTokenizer(std::vector<std::string> patterns, const std::string& origin);
  ~PreTokenizer();
  PreTokenizer(PreTokenizer&&) noexcept;
  PreTokenizer& operator=(PreTokenizer&&) noexcept;

  // Words of text; with no pattern the whole (sanitized) text is one word. Empty text: no word.
  std::vector<std::string> split(std::string_view text) const;
  const std::vector<std::string>& patterns() const { return patterns_; }

 private:
  std::vector<std::string> patterns_;
  std::vector<std::unique_ptr<Regex>> regexes_;
};

// What a `tokenizer.ggml.pre` value means in llama.cpp: its regexes and the defaults it implies.
struct PreTokenizerSpec {
  std::vector<std::string> patterns;
  bool ignore_merges = false;  // a word that is itself a token is emitted whole (Llama 3, tiktoken)
  bool add_bos = false;        // default of tokenizer.ggml.add_bos_token for this family
};
// Throws Error (naming `origin`) for a name llama.cpp would not know. "" and "default" give
// llama.cpp's fallback.
PreTokenizerSpec pre_tokenizer_spec(const std::string& pre, const std::string& origin = "tokenizer");

// The two patterns everyone shares.
extern const char* const kGpt2Pattern;    // GPT-2 / ByteLevel(use_regex=true)
extern const char* const kLlama3Pattern;  // Llama 3 / tiktoken cl100k-style

}  // namespace primal
