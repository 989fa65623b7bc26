#include "tokenizer/pretokenize.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "core/error.h"
#include "tokenizer/unicode.h"

namespace primal {

// GPT-2's pattern as tokenizer.json writes it (llama.cpp drops the final `|\s+`, which changes
// nothing: the single whitespace it would catch is left as a gap, and gaps are words too).
const char* const kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
const char* const kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

namespace {

const char* const kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// The GPT-2 pattern without the last alternative, as llama.cpp lists it for falcon & co.
const char* const kGpt2Core = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S))";
// DeepSeek's explicit letter and CJK classes (from their tokenizer.json). The six characters that
// Unicode normalization would silently replace by their canonical twins (U+1F7D, U+1FBE, U+1FD3,
// U+1FDB, U+2126 Ohm, U+212A Kelvin) are written as escapes.
const char* const kDeepseekLetters =
    R"(\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\x{1F7D}ᾀ-ᾴᾶ-ᾼ\x{1FBE}ῂ-ῄῆ-ῌῐ-\x{1FD3}ῖ-\x{1FDB}ῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\x{2126}ℨ\x{212A}-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+)";
const char* const kDeepseekCjk = R"([一-龥ࠀ-一가-퟿]+)";

}  // namespace

// One compiled pattern.
class Regex {
 public:
  Regex(const std::string& pattern, const std::string& origin) {
    int err = 0;
    PCRE2_SIZE err_off = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                          PCRE2_UTF | PCRE2_UCP | PCRE2_DOLLAR_ENDONLY, &err, &err_off, nullptr);
    if (!code_) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      fail("{}: pre-tokenizer regex rejected at offset {}: {} (pattern: {})", origin, err_off,
           reinterpret_cast<const char*>(msg), pattern);
    }
    jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;
  }
  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  pcre2_code* code() const { return code_; }

  // Next match in subj[0, len) at or after `from`: [b, e). False when there is none, or when the
  // engine gives up (match or stack limits on pathological input): the rest is then a gap.
  bool find(const char* subj, size_t len, size_t from, pcre2_match_data* md, size_t& b,
            size_t& e) const {
    const auto s = reinterpret_cast<PCRE2_SPTR>(subj);
    int rc = pcre2_match(code_, s, len, from, PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT && jit_) {
      rc = pcre2_match(code_, s, len, from, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, nullptr);
    }
    if (rc < 0) return false;
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    b = ov[0];
    e = ov[1];
    return b <= e && e <= len;
  }

 private:
  pcre2_code* code_ = nullptr;
  bool jit_ = false;
};

PreTokenizer::PreTokenizer(std::vector<std::string> patterns, const std::string& origin)
    : patterns_(std::move(patterns)) {
  for (const auto& p : patterns_) regexes_.push_back(std::make_unique<Regex>(p, origin));
}
PreTokenizer::PreTokenizer() = default;
PreTokenizer::~PreTokenizer() = default;
PreTokenizer::PreTokenizer(PreTokenizer&&) noexcept = default;
PreTokenizer& PreTokenizer::operator=(PreTokenizer&&) noexcept = default;

std::vector<std::string> PreTokenizer::split(std::string_view text) const {
  const std::vector<uint32_t> cpts = unicode::decode(text);
  const size_t n = cpts.size();
  std::vector<std::string> words;
  if (n == 0) return words;

  // lengths of consecutive pieces, in code points
  std::vector<size_t> pieces = {n};
  if (!regexes_.empty()) {
    // The subject PCRE2 matches (see the header for the two substitutions), with the byte offset
    // of every code point and the way back.
    std::string subject;
    subject.reserve(text.size() + 8);
    std::vector<size_t> byte_of(n + 1);
    for (size_t i = 0; i < n; ++i) {
      byte_of[i] = subject.size();
      uint32_t c = cpts[i];
      if (c >= 0x80 && unicode::is_whitespace(c)) c = 0x0B;
      if (c >= 0xD800 && c <= 0xDFFF) c = 0xE000;
      unicode::append_utf8(subject, c);
    }
    byte_of[n] = subject.size();
    std::vector<uint32_t> cpt_of(subject.size() + 1, 0);
    for (size_t i = 0; i <= n; ++i) cpt_of[byte_of[i]] = uint32_t(i);

    for (const auto& re : regexes_) {
      pcre2_match_data* md = pcre2_match_data_create_from_pattern(re->code(), nullptr);
      PRIMAL_CHECK(md, "pre-tokenizer: out of memory for PCRE2 match data");
      std::vector<size_t> next;
      next.reserve(pieces.size() * 2);
      size_t start = 0;  // first code point of the current piece
      for (const size_t len : pieces) {
        const size_t b0 = byte_of[start];
        const size_t blen = byte_of[start + len] - b0;
        const char* subj = subject.data() + b0;
        size_t prev = 0;  // bytes of this piece already assigned
        size_t from = 0;
        size_t mb = 0, me = 0;
        while (from <= blen && re->find(subj, blen, from, md, mb, me)) {
          if (me == mb) {  // an empty match cuts nothing; step one character on
            if (mb >= blen) break;
            from = mb + unicode::utf8_len(uint8_t(subj[mb]));
            continue;
          }
          const size_t cb = cpt_of[b0 + mb], ce = cpt_of[b0 + me], cp = cpt_of[b0 + prev];
          if (cb > cp) next.push_back(cb - cp);
          next.push_back(ce - cb);
          prev = from = me;
        }
        const size_t cp = cpt_of[b0 + prev];
        if (start + len > cp) next.push_back(start + len - cp);
        start += len;
      }
      pcre2_match_data_free(md);
      pieces = std::move(next);
    }
  }

  words.reserve(pieces.size());
  size_t start = 0;
  for (const size_t len : pieces) {
    std::string w;
    for (size_t i = start; i < start + len; ++i) unicode::append_utf8(w, cpts[i]);
    words.push_back(std::move(w));
    start += len;
  }
  return words;
}

PreTokenizerSpec pre_tokenizer_spec(const std::string& pre, const std::string& origin) {
  auto is = [&](std::initializer_list<const char*> names) {
    for (const char* n : names) {
      if (pre == n) return true;
    }
    return false;
  };
  PreTokenizerSpec s;
  if (pre.empty() || pre == "default") {
    s.patterns = {R"([\p{P}\$\+<=>\^~\|]+)", kGpt2Core, R"(\p{N}+)", "[0-9][0-9][0-9]"};
  } else if (is({"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0",
                 "lfm2"})) {
    s.patterns = {kLlama3Pattern};
    s.ignore_merges = true;
    s.add_bos = true;
  } else if (is({"dbrx", "smaug-bpe", "chatglm-bpe", "glm4"})) {
    s.patterns = {kLlama3Pattern};
  } else if (pre == "deepseek-llm") {
    s.patterns = {"[\r\n]", kDeepseekLetters, R"(\s?[!-/:-~！-／：-～‘-‟　-。]+)", R"(\s+$)",
                  kDeepseekCjk, R"(\p{N}+)"};
  } else if (pre == "deepseek-coder") {
    s.patterns = {"[\r\n]", R"(\s?\p{L}+)", R"(\s?\p{P}+)", kDeepseekCjk, R"(\p{N})"};
  } else if (pre == "deepseek-v3") {
    s.patterns = {R"(\p{N}{1,3})", R"([一-龥぀-ゟ゠-ヿ]+)",
                  R"([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"};
  } else if (pre == "falcon") {
    s.patterns = {R"([\p{P}\$\+<=>\^~\|`]+)", kGpt2Core, "[0-9][0-9][0-9]"};
  } else if (is({"starcoder", "refact", "command-r", "smollm", "codeshell", "exaone",
                 "minerva-7b"})) {
    s.patterns = {R"(\p{N})", kGpt2Core};
  } else if (is({"gpt-2", "phi-2", "mpt", "olmo", "jais", "jina-es", "jina-de", "gigachat",
                 "jina-v2-es", "jina-v2-de", "jina-v1-en", "jina-v2-code", "roberta-bpe",
                 "trillion", "exaone4", "a.x-4.0", "mellum", "granite-docling"})) {
    s.patterns = {kGpt2Core};
  } else if (is({"qwen2", "stablelm2", "deepseek-r1-qwen", "megrez", "hunyuan"})) {
    s.patterns = {kQwen2Pattern};
  } else if (is({"poro-chat", "bloom", "gpt3-finnish"})) {
    s.patterns = {R"( ?[^(\s|.,!?…。，、।۔،)]+)"};
  } else if (pre == "viking") {
    s.patterns = {R"( ?[^(\s|.,!?…。，、।۔،)]+)", R"(\p{N})"};
  } else if (pre == "tekken") {
    s.patterns = {
        R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)"};
    s.ignore_merges = true;
    s.add_bos = true;
  } else if (is({"gpt-4o", "llama4"})) {
    s.patterns = {
        R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)"};
  } else if (pre == "seed-coder") {
    s.patterns = {
        R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+)"};
  } else if (is({"bailingmoe", "llada-moe"})) {
    s.patterns = {
        R"('(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+)"};
  } else {
    fail("{}: unknown pre-tokenizer type '{}' (tokenizer.ggml.pre)", origin, pre);
  }
  return s;
}

}  // namespace primal
