// Tokenizer behaviour beyond the test vectors: special tokens and BOS/EOS as the metadata says,
// invalid UTF-8 handled as llama.cpp handles it, random bytes through every tokenizer, speed on
// 1 MB of code, thread safety, and clear errors for malformed vocabularies.
#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <cstring>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "io/gguf.h"
#include "testing.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

using namespace primal;
using std::string_literals::operator""s;
using Ids = std::vector<int32_t>;

namespace {

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::unique_ptr<Tokenizer> load(const std::string& rel) { return Tokenizer::open(test::data_path(rel)); }

// Cached: the vocabularies are loaded once per program.
const Tokenizer& vocab(const std::string& rel) {
  static std::map<std::string, std::unique_ptr<Tokenizer>> cache;
  auto& t = cache[rel];
  if (!t) t = load(rel);
  return *t;
}
const Tokenizer& gpt2() { return vocab("vocab/ggml-vocab-gpt-2.gguf"); }
const Tokenizer& spm() { return vocab("vocab/ggml-vocab-llama-spm.gguf"); }
const Tokenizer& llama3() { return vocab("vocab/llama3/tokenizer.model"); }

TEST(TokenizerSpecial, Gpt2EndOfText) {
  const Tokenizer& t = gpt2();
  EXPECT_EQ(t.n_vocab(), 50257);
  EXPECT_EQ(t.bos_id(), 50256);
  EXPECT_EQ(t.eos_id(), 50256);
  EXPECT_FALSE(t.add_bos());  // no tokenizer.ggml.add_bos_token, and gpt-2 does not default to it
  EXPECT_EQ(t.encode("Hello world", true, false), (Ids{15496, 995}));
  // <|endoftext|> is a control token: plain text unless parse_special
  EXPECT_EQ(t.encode("a<|endoftext|>b", false, true), (Ids{64, 50256, 65}));
  const Ids plain = t.encode("a<|endoftext|>b", false, false);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), 50256), 0);
  EXPECT_EQ(t.decode(plain), "a<|endoftext|>b");
  EXPECT_TRUE(t.is_eog(50256));
  EXPECT_TRUE(t.is_special(50256));
  EXPECT_FALSE(t.is_eog(15496));
  EXPECT_EQ(t.token_text(15496), "Hello");
  EXPECT_EQ(t.token_text(995), "\xC4\xA0world");  // "Ġworld"
  EXPECT_EQ(t.token_to_piece(995), " world");
  EXPECT_EQ(t.decode({15496, 50256, 995}), "Hello<|endoftext|> world");
  EXPECT_EQ(t.decode({15496, 50256, 995}, /*skip_special=*/true), "Hello world");
  EXPECT_THROW(t.decode({50257}), Error);
  EXPECT_THROW(t.decode({-1}), Error);
  EXPECT_THROW(t.token_to_piece(60000), Error);
}

TEST(TokenizerSpecial, LlamaSpmBosAndSpacePrefix) {
  const Tokenizer& t = spm();
  EXPECT_TRUE(t.add_bos());  // tokenizer.ggml.add_bos_token = true
  EXPECT_FALSE(t.add_eos());
  EXPECT_EQ(t.encode("Hello world", true, false), (Ids{1, 15043, 3186}));
  EXPECT_EQ(t.encode("Hello world", false, false), (Ids{15043, 3186}));
  EXPECT_EQ(t.encode("", true, false), (Ids{1}));
  EXPECT_EQ(t.encode("", false, false), Ids{});
  // after a special token the text gets the SentencePiece space again (llama.cpp's rule)
  EXPECT_EQ(t.encode("<s>Hello", false, true), (Ids{1, 15043}));
  EXPECT_EQ(t.encode("Hello</s>", true, true), (Ids{1, 15043, 2}));
  EXPECT_TRUE(t.is_eog(2));
  // decode takes the added space off the first text token, after a leading BOS too
  EXPECT_EQ(t.decode({1, 15043, 3186}, true), "Hello world");
  EXPECT_EQ(t.decode({15043, 3186}), "Hello world");
  EXPECT_EQ(t.decode({1, 15043}), "<s>Hello");
  // byte tokens are single bytes
  EXPECT_EQ(t.token_text(13), "<0x0A>");
  EXPECT_EQ(t.token_to_piece(13), "\n");
}

TEST(TokenizerSpecial, Llama3Tiktoken) {
  const Tokenizer& t = llama3();
  EXPECT_EQ(t.n_vocab(), 128256);
  EXPECT_TRUE(t.add_bos());
  EXPECT_EQ(t.encode("Hello world", true, false), (Ids{128000, 9906, 1917}));
  EXPECT_EQ(t.encode("<|start_header_id|>user<|end_header_id|>", false, true), (Ids{128006, 882, 128007}));
  EXPECT_EQ(t.token_text(128009), "<|eot_id|>");
  EXPECT_TRUE(t.is_eog(128001));  // <|end_of_text|>
  EXPECT_TRUE(t.is_eog(128009));  // <|eot_id|>
  EXPECT_FALSE(t.is_eog(128000));
  EXPECT_EQ(t.decode(t.encode("Hi <|eot_id|>", true, true), true), "Hi ");
}

TEST(TokenizerSpecial, Phi3SpecialTokensEatFollowingSpaces) {
  const Tokenizer& t = vocab("vocab/ggml-vocab-phi-3.gguf");
  // <|end|> (control, rstrip by llama.cpp's phi-3 rule) swallows "  ", then the SentencePiece space
  // returns for the next text.
  EXPECT_EQ(t.encode("Hi<|end|>  there</s>  x", false, true), (Ids{6324, 32007, 727, 2, 921}));
  // </s> is user-defined in the file, but llama.cpp's end-of-generation rule makes it a control
  // token too, so without parse_special it is plain text.
  const Ids plain = t.encode("Hi</s>x", false, false);
  EXPECT_EQ(std::find(plain.begin(), plain.end(), 2), plain.end());
  EXPECT_TRUE(t.is_eog(32007));
  EXPECT_TRUE(t.is_eog(2));
}

TEST(TokenizerInvalidUtf8, ByteLevelBpeSeesReplacementCharacters) {
  // llama.cpp decodes the text first: each invalid byte becomes U+FFFD, overlongs their value
  const Tokenizer& t = gpt2();
  const Ids fffd = t.encode("\xEF\xBF\xBD", false, false);
  EXPECT_EQ(fffd, (Ids{4210}));
  EXPECT_EQ(t.encode("\xFF", false, false), fffd);
  EXPECT_EQ(t.encode("\x80", false, false), fffd);
  EXPECT_EQ(t.encode("\xE2\x82" "A", false, false), t.encode("\xEF\xBF\xBD\xEF\xBF\xBD" "A", false, false));
  EXPECT_EQ(t.encode("\xC0\x80", false, false), t.encode("\0"s, false, false));
  EXPECT_EQ(t.encode("x\xC1\xBF", false, false), t.encode("x\x7F", false, false));
  // a surrogate keeps its three bytes
  EXPECT_EQ(t.decode(t.encode("a\xED\xA0\x80" "b", false, false)), "a\xED\xA0\x80" "b");
  // above U+10FFFF: four replacement characters (llama.cpp would throw)
  EXPECT_EQ(t.encode("\xF4\x90\x80\x80", false, false),
            t.encode("\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD", false, false));
}

TEST(TokenizerInvalidUtf8, SpmSpellsBytesWithByteTokens) {
  // SentencePiece never decodes: a character is as long as its lead byte says, and a piece that is
  // no token is spelled <0xXX> (id 3 + byte in Llama 2's vocabulary)
  const Tokenizer& t = spm();
  EXPECT_EQ(t.encode("\xFF", false, false), (Ids{29871, 3 + 0xFF}));
  EXPECT_EQ(t.encode("\xE2\x82" "A", false, false), (Ids{29871, 3 + 0xE2, 3 + 0x82, 3 + 0x41}));
  EXPECT_EQ(t.encode("a\x80", false, false), (Ids{263, 3 + 0x80}));
  EXPECT_EQ(t.decode(t.encode("a\x80\xC0\x80\xED\xA0\x80", false, false)), "a\x80\xC0\x80\xED\xA0\x80");
}

// Random byte strings, biased towards UTF-8 structure (leads, continuations, spaces, digits).
std::string random_bytes(std::mt19937& rng, size_t max_len) {
  static const std::vector<std::string> atoms = {
      "a", "Z", " ", "  ", "\n", "\t", "3", "'s", "!", "<|", "|>", "<s>", "\xC3\xA9", "\xE2\x82\xAC", "\xF0\x9F\xA6\x99",
      "\xE4\xB8\xAD", "\xC2\x85", "\xE3\x80\x80", "\x80", "\xBF", "\xC3", "\xE2\x82", "\xF0\x9F", "\xFF", "\xFE", "\xC0\x80",
      "\xED\xA0\x80", "\xF4\x90\x80\x80", "\0"s, "\xE1\x9E\x80", "\xCC\x81"};
  std::string s;
  const size_t n = rng() % (max_len + 1);
  while (s.size() < n) {
    if (rng() % 3 == 0) {
      s.push_back(char(rng() & 0xFF));
    } else {
      s += atoms[rng() % atoms.size()];
    }
  }
  return s;
}

// Random valid UTF-8 from a mix of scripts, spaces (U+0085, U+3000 too), digits, marks and emoji.
std::string random_text(std::mt19937& rng, size_t max_chars) {
  static const std::vector<std::pair<uint32_t, uint32_t>> ranges = {
      {0x20, 0x7E}, {0x09, 0x0D}, {0xA0, 0x17F}, {0x300, 0x36F}, {0x400, 0x4FF}, {0x1780, 0x17FF},
      {0x3000, 0x3002}, {0x4E00, 0x4FFF}, {0xAC00, 0xAD00}, {0x1F300, 0x1F64F}, {0x85, 0x85}, {0x30, 0x39}};
  std::string s;
  const size_t n = rng() % (max_chars + 1);
  for (size_t i = 0; i < n; ++i) {
    const auto& r = ranges[rng() % ranges.size()];
    unicode::append_utf8(s, r.first + rng() % (r.second - r.first + 1));
  }
  return s;
}

struct Fuzzed {
  const char* source;
  enum { kByteLevel, kSpm, kWordPiece } kind;
};

// What a byte-level BPE vocabulary gives back for s: the text as llama.cpp decodes it, less the
// bytes whose GPT-2 character is no token (falcon lacks a few control bytes; llama.cpp drops them).
std::array<bool, 256> bytes_with_token(const Tokenizer& t) {
  std::set<std::string> texts;
  for (int32_t id = 0; id < t.n_vocab(); ++id) texts.insert(t.token_text(id));
  std::array<bool, 256> has{};
  for (int b = 0; b < 256; ++b) has[b] = texts.count(unicode::byte_to_utf8(uint8_t(b))) > 0;
  return has;
}
std::string byte_level_image(const std::array<bool, 256>& has, const std::string& s) {
  std::string out;
  for (const char c : unicode::sanitize(s)) {
    if (has[uint8_t(c)]) out.push_back(c);
  }
  return out;
}

TEST(TokenizerInvalidUtf8, RandomBytesThroughEveryTokenizer) {
  const std::vector<Fuzzed> all = {
      {"vocab/ggml-vocab-gpt-2.gguf", Fuzzed::kByteLevel},        {"vocab/ggml-vocab-deepseek-llm.gguf", Fuzzed::kByteLevel},
      {"vocab/ggml-vocab-deepseek-coder.gguf", Fuzzed::kByteLevel}, {"vocab/ggml-vocab-falcon.gguf", Fuzzed::kByteLevel},
      {"vocab/ggml-vocab-mpt.gguf", Fuzzed::kByteLevel},          {"vocab/ggml-vocab-refact.gguf", Fuzzed::kByteLevel},
      {"vocab/ggml-vocab-starcoder.gguf", Fuzzed::kByteLevel},    {"vocab/ggml-vocab-gpt-neox.gguf", Fuzzed::kByteLevel},
      {"vocab/llama3/tokenizer.model", Fuzzed::kByteLevel},       {"models/ref-llama-code", Fuzzed::kByteLevel},
      {"vocab/ggml-vocab-llama-spm.gguf", Fuzzed::kSpm},          {"vocab/ggml-vocab-phi-3.gguf", Fuzzed::kSpm},
      {"vocab/ggml-vocab-baichuan.gguf", Fuzzed::kSpm},           {"vocab/ggml-vocab-bert-bge.gguf", Fuzzed::kWordPiece},
  };
  std::mt19937 rng(1234);
  for (const Fuzzed& f : all) {
    const Tokenizer& t = vocab(f.source);
    const std::array<bool, 256> has = bytes_with_token(t);
    size_t exact = 0;
    for (int i = 0; i < 200; ++i) {
      const std::string s = random_bytes(rng, 80);
      for (const bool add : {false, true}) {
        for (const bool parse : {false, true}) {
          Ids ids;
          ASSERT_NO_THROW(ids = t.encode(s, add, parse)) << f.source;
          for (const int32_t id : ids) ASSERT_TRUE(id >= 0 && id < t.n_vocab()) << f.source << " id " << id;
          ASSERT_NO_THROW(t.decode(ids, true));
        }
      }
      // Without special tokens the text comes back as llama.cpp gives it back: byte-level BPE as the
      // decoded text (U+FFFD for invalid bytes). (SentencePiece keeps the bytes, but a truncated
      // sequence before a space swallows part of the escaped "▁" into byte tokens, which then decode
      // to "▁" instead of a space, in llama.cpp too; it round-trips valid text, tested below.)
      if (f.kind == Fuzzed::kByteLevel) {
        const Ids ids = t.encode(s, false, false);
        const std::string want = byte_level_image(has, s);
        EXPECT_EQ(t.decode(ids), want) << f.source;
        exact += t.decode(ids) == want;
      }
      // Valid UTF-8: every byte-level and SentencePiece vocabulary gives the text back.
      const std::string v = random_text(rng, 40);
      if (f.kind != Fuzzed::kWordPiece) {
        const std::string want = f.kind == Fuzzed::kByteLevel ? byte_level_image(has, v) : v;
        EXPECT_EQ(t.decode(t.encode(v, false, false)), want) << f.source;
        exact += t.decode(t.encode(v, false, false)) == want;
      }
    }
    if (f.kind == Fuzzed::kByteLevel) EXPECT_EQ(exact, 400u) << f.source;
    if (f.kind == Fuzzed::kSpm) EXPECT_EQ(exact, 200u) << f.source;
  }
}

TEST(TokenizerSpeed, OneMegabyteOfPythonWithGpt2) {
  const std::string text = slurp(test::data_path("text/python-stdlib-valid.txt"));
  ASSERT_GT(text.size(), 1000000u);
  const Tokenizer& t = gpt2();
  const auto t0 = std::chrono::steady_clock::now();
  const Ids ids = t.encode(text, false, false);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("[ speed ] %zu bytes -> %zu tokens in %.3f s (%.1f MB/s)\n", text.size(), ids.size(), s,
              text.size() / s / 1e6);
  // reference.json's valid_tokens_whole_file, from the HF tokenizer of the same vocabulary
  EXPECT_EQ(ids.size(), 485363u);
  EXPECT_EQ(t.decode(ids), text);
  EXPECT_LT(s, 3.0);
}

TEST(TokenizerThreads, ConcurrentEncodesAgree) {
  const std::string text = slurp(test::data_path("vocab/ggml-vocab-gpt-2.gguf.inp"));
  const Tokenizer& t = llama3();
  const Ids want = t.encode(text, true, true);
  std::vector<Ids> got(4);
  std::vector<std::thread> th;
  for (int k = 0; k < 4; ++k) {
    th.emplace_back([&, k] {
      for (int r = 0; r < 5; ++r) got[k] = t.encode(text, true, true);
    });
  }
  for (auto& x : th) x.join();
  for (const Ids& g : got) EXPECT_EQ(g, want);
}

// ---- malformed vocabularies: a GGUF written by hand ----

struct GgufBuilder {
  std::string out;
  uint64_t n_kv = 0;
  void u32(uint32_t v) { out.append(reinterpret_cast<const char*>(&v), 4); }
  void u64(uint64_t v) { out.append(reinterpret_cast<const char*>(&v), 8); }
  void str(const std::string& s) {
    u64(s.size());
    out += s;
  }
  void key(const std::string& k, uint32_t type) {
    str(k);
    u32(type);
    ++n_kv;
  }
  void kv_str(const std::string& k, const std::string& v) {
    key(k, 8);
    str(v);
  }
  void kv_u32(const std::string& k, uint32_t v) {
    key(k, 4);
    u32(v);
  }
  void kv_bool(const std::string& k, bool v) {
    key(k, 7);
    out.push_back(char(v));
  }
  void kv_strs(const std::string& k, const std::vector<std::string>& v) {
    key(k, 9);
    u32(8);
    u64(v.size());
    for (const auto& s : v) str(s);
  }
  void kv_f32s(const std::string& k, const std::vector<float>& v) {
    key(k, 9);
    u32(6);
    u64(v.size());
    for (float f : v) out.append(reinterpret_cast<const char*>(&f), 4);
  }
  std::string bytes() const {
    std::string h = "GGUF";
    const uint32_t version = 3;
    const uint64_t zero = 0;
    h.append(reinterpret_cast<const char*>(&version), 4);
    h.append(reinterpret_cast<const char*>(&zero), 8);
    h.append(reinterpret_cast<const char*>(&n_kv), 8);
    std::string all = h + out;
    all.resize((all.size() + 31) / 32 * 32, '\0');
    return all;
  }
};

std::unique_ptr<Tokenizer> from_builder(const GgufBuilder& b, std::string& keep) {
  keep = b.bytes();
  auto f = GgufFile::from_buffer(reinterpret_cast<const uint8_t*>(keep.data()), keep.size(), "handmade.gguf");
  return Tokenizer::from_gguf(*f);
}

void expect_error(const GgufBuilder& b, const std::string& what) {
  std::string keep;
  try {
    from_builder(b, keep);
    ADD_FAILURE() << "expected an error mentioning '" << what << "'";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("handmade.gguf"), std::string::npos) << msg;
    EXPECT_NE(msg.find(what), std::string::npos) << msg;
  }
}

TEST(TokenizerErrors, MalformedGgufVocabularies) {
  {
    GgufBuilder b;
    b.kv_str("general.name", "x");
    expect_error(b, "tokenizer.ggml.model");
  }
  {
    GgufBuilder b;
    b.kv_str("tokenizer.ggml.model", "t5");
    b.kv_strs("tokenizer.ggml.tokens", {"a"});
    expect_error(b, "'t5'");
  }
  {
    GgufBuilder b;
    b.kv_str("tokenizer.ggml.model", "gpt2");
    b.kv_str("tokenizer.ggml.pre", "no-such-pre");
    b.kv_strs("tokenizer.ggml.tokens", {"a", "b"});
    b.kv_strs("tokenizer.ggml.merges", {"a b"});
    expect_error(b, "no-such-pre");
  }
  {
    GgufBuilder b;
    b.kv_str("tokenizer.ggml.model", "gpt2");
    b.kv_str("tokenizer.ggml.pre", "gpt-2");
    b.kv_strs("tokenizer.ggml.tokens", {"a", "b"});
    expect_error(b, "tokenizer.ggml.merges");  // BPE without merges
  }
  {
    GgufBuilder b;
    b.kv_str("tokenizer.ggml.model", "llama");
    b.kv_strs("tokenizer.ggml.tokens", {"<unk>", "<s>", "</s>"});
    b.kv_f32s("tokenizer.ggml.scores", {0, 0});
    expect_error(b, "scores");
  }
  {
    GgufBuilder b;
    b.kv_str("tokenizer.ggml.model", "llama");
    b.kv_strs("tokenizer.ggml.tokens", {"<unk>", "<s>", "<s>"});
    expect_error(b, "duplicate token");
  }
  {
    GgufBuilder b;  // add_bos with a BOS id outside the vocabulary
    b.kv_str("tokenizer.ggml.model", "gpt2");
    b.kv_str("tokenizer.ggml.pre", "gpt-2");
    b.kv_strs("tokenizer.ggml.tokens", {"a", "b"});
    b.kv_strs("tokenizer.ggml.merges", {"a b"});
    b.kv_u32("tokenizer.ggml.bos_token_id", 7);
    b.kv_bool("tokenizer.ggml.add_bos_token", true);
    expect_error(b, "BOS");
  }
  {
    GgufBuilder b;
    b.kv_str("tokenizer.ggml.model", "gpt2");
    b.kv_u32("tokenizer.ggml.tokens", 5);  // not an array
    expect_error(b, "tokenizer.ggml.tokens");
  }
}

TEST(TokenizerErrors, TinyHandmadeVocabulariesBehaveLikeLlamaCpp) {
  {
    // BPE: "a b" -> "ab"; a byte whose character is not a token is dropped, as llama.cpp drops it
    GgufBuilder b;
    b.kv_str("tokenizer.ggml.model", "gpt2");
    b.kv_str("tokenizer.ggml.pre", "gpt-2");
    b.kv_strs("tokenizer.ggml.tokens", {"a", "b", "ab", "\xC4\xA0", "<|eos|>"});
    b.kv_strs("tokenizer.ggml.merges", {"a b", "\xC4\xA0 a"});  // "Ġa" is no token
    b.kv_u32("tokenizer.ggml.eos_token_id", 4);
    std::string keep;
    const auto t = from_builder(b, keep);
    EXPECT_EQ(t->encode("ab", false, false), (Ids{2}));
    EXPECT_EQ(t->encode("ba", false, false), (Ids{1, 0}));
    EXPECT_EQ(t->encode("abc", false, false), (Ids{2}));
    // " a" merges into "Ġa", which is no token: llama.cpp then tries each byte of "Ġa" as a token
    // and keeps only "a"
    EXPECT_EQ(t->encode("ab a", false, false), (Ids{2, 0}));
    EXPECT_EQ(t->encode("ab b", false, false), (Ids{2, 3, 1}));
    EXPECT_TRUE(t->is_eog(4));
  }
  {
    // SentencePiece without byte tokens: an unknown character becomes <unk>
    GgufBuilder b;
    b.kv_str("tokenizer.ggml.model", "llama");
    b.kv_strs("tokenizer.ggml.tokens", {"<unk>", "<s>", "</s>", "\xE2\x96\x81", "a", "b", "\xE2\x96\x81" "a", "ab",
                                        "\xE2\x96\x81" "ab"});
    b.kv_f32s("tokenizer.ggml.scores", {0, 0, 0, -1, -2, -3, -4, -5, -1});
    std::string keep;
    const auto t = from_builder(b, keep);
    EXPECT_EQ(t->encode("ab", true, false), (Ids{1, 8}));
    EXPECT_EQ(t->encode("ab c", false, false), (Ids{8, 3, 0}));
    EXPECT_EQ(t->decode({8, 3, 4}), "ab a");
  }
}

TEST(TokenizerErrors, OpenRejectsWhatIsNoTokenizer) {
  EXPECT_THROW(Tokenizer::open("/no/such/path"), Error);
  // a text file that is not a tiktoken file
  EXPECT_THROW(Tokenizer::open(test::data_path("text/tinyshakespeare.txt")), Error);
  // a folder without tokenizer.json
  EXPECT_THROW(Tokenizer::open(test::data_path("text")), Error);
}

}  // namespace
