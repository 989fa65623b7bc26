// The building blocks of the tokenizers: UTF-8 decoding with llama.cpp's invalid-byte rule, the
// GPT-2 byte alphabet, regex pre-tokenization, base64 and tiktoken rank files.
#include <gtest/gtest.h>

#include "core/error.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/tiktoken.h"
#include "tokenizer/unicode.h"
#include "tokenizer/wpm.h"

using namespace primal;
using std::string_literals::operator""s;

namespace {

std::vector<uint32_t> cps(std::string_view s) { return unicode::decode(s); }

TEST(Unicode, DecodesValidUtf8) {
  EXPECT_EQ(cps("a\xC3\xA9\xE2\x82\xAC\xF0\x9F\xA6\x99"), (std::vector<uint32_t>{'a', 0xE9, 0x20AC, 0x1F999}));
  EXPECT_EQ(cps(""), std::vector<uint32_t>{});
  EXPECT_EQ(cps("\0x"s), (std::vector<uint32_t>{0, 'x'}));
}

TEST(Unicode, InvalidBytesBecomeReplacementOneByteAtATime) {
  const uint32_t R = unicode::kReplacement;
  // lone continuation bytes, 0xFF/0xF8 leads
  EXPECT_EQ(cps("\x80\xBF"), (std::vector<uint32_t>{R, R}));
  EXPECT_EQ(cps("\xFF\xF8z"), (std::vector<uint32_t>{R, R, 'z'}));
  // truncated sequences: the lead byte and each stray continuation byte are replaced separately
  EXPECT_EQ(cps("\xE2\x82"), (std::vector<uint32_t>{R, R}));
  EXPECT_EQ(cps("\xE2\x82" "A"), (std::vector<uint32_t>{R, R, 'A'}));
  EXPECT_EQ(cps("\xF0\x9F\xA6"), (std::vector<uint32_t>{R, R, R}));
  EXPECT_EQ(cps("\xC3"), (std::vector<uint32_t>{R}));
  // overlong forms and surrogates decode to the value they spell (llama.cpp does not reject them)
  EXPECT_EQ(cps("\xC0\x80"), (std::vector<uint32_t>{0}));
  EXPECT_EQ(cps("\xC1\xBF"), (std::vector<uint32_t>{0x7F}));
  EXPECT_EQ(cps("\xE0\x80\xAF"), (std::vector<uint32_t>{0x2F}));
  EXPECT_EQ(cps("\xED\xA0\x80"), (std::vector<uint32_t>{0xD800}));
  // above U+10FFFF: the lead byte is invalid (llama.cpp would throw here)
  EXPECT_EQ(cps("\xF4\x90\x80\x80"), (std::vector<uint32_t>{R, R, R, R}));
  EXPECT_EQ(cps("\xF7\xBF\xBF\xBF"), (std::vector<uint32_t>{R, R, R, R}));
  EXPECT_EQ(cps("\xF4\x8F\xBF\xBF"), (std::vector<uint32_t>{0x10FFFF}));
}

TEST(Unicode, SanitizeReencodes) {
  EXPECT_EQ(unicode::sanitize("ok \xC3\xA9"), "ok \xC3\xA9");
  EXPECT_EQ(unicode::sanitize("\xFF"), "\xEF\xBF\xBD");
  EXPECT_EQ(unicode::sanitize("\xC0\x80"), "\0"s);
  EXPECT_EQ(unicode::sanitize("\xED\xA0\x80"), "\xED\xA0\x80");
  EXPECT_EQ(unicode::utf8_len(0x41), 1u);
  EXPECT_EQ(unicode::utf8_len(0x80), 1u);
  EXPECT_EQ(unicode::utf8_len(0xC3), 2u);
  EXPECT_EQ(unicode::utf8_len(0xE2), 3u);
  EXPECT_EQ(unicode::utf8_len(0xFF), 4u);
}

TEST(Unicode, Gpt2ByteAlphabet) {
  // the well-known images: space -> Ġ (U+0120), newline -> Ċ (U+010A), 'A' -> 'A', 0xAD -> U+0143
  EXPECT_EQ(unicode::byte_to_cpt(' '), 0x120u);
  EXPECT_EQ(unicode::byte_to_cpt('\n'), 0x10Au);
  EXPECT_EQ(unicode::byte_to_cpt('A'), uint32_t('A'));
  EXPECT_EQ(unicode::byte_to_cpt(0xAD), 0x143u);
  EXPECT_EQ(unicode::byte_to_cpt(0), 0x100u);
  // a bijection onto 256 distinct code points
  std::string all;
  for (int b = 0; b < 256; ++b) {
    all.push_back(char(b));
    EXPECT_EQ(unicode::cpt_to_byte(unicode::byte_to_cpt(uint8_t(b))), b);
  }
  std::string back;
  EXPECT_TRUE(unicode::gpt2_to_bytes(unicode::bytes_to_gpt2(all), back));
  EXPECT_EQ(back, all);
  back.clear();
  EXPECT_FALSE(unicode::gpt2_to_bytes("\xE2\x82\xAC", back));  // € is not in the alphabet
}

std::vector<std::string> split(const std::vector<std::string>& patterns, std::string_view text) {
  return PreTokenizer(patterns, "test").split(text);
}

TEST(PreTokenizer, Gpt2Pattern) {
  EXPECT_EQ(split({kGpt2Pattern}, "Hello world's  3.14!\n\n  x"),
            (std::vector<std::string>{"Hello", " world", "'s", " ", " 3", ".", "14", "!", "\n\n ", " x"}));
  EXPECT_EQ(split({kGpt2Pattern}, ""), std::vector<std::string>{});
}

TEST(PreTokenizer, Llama3PatternGroupsDigitsByThree) {
  EXPECT_EQ(split({kLlama3Pattern}, "1234567 I'M ok\r\n"),
            (std::vector<std::string>{"123", "456", "7", " I", "'M", " ok", "\r\n"}));
}

TEST(PreTokenizer, PatternsApplyInSequenceAndGapsAreWords) {
  // the second pattern only sees the pieces the first one left, never across them
  EXPECT_EQ(split({"[0-9]+", "[a-z]+"}, "ab12cd!3"), (std::vector<std::string>{"ab", "12", "cd", "!", "3"}));
  EXPECT_EQ(split({"x"}, "axbxx"), (std::vector<std::string>{"a", "x", "b", "x", "x"}));
  // lookahead stops at the piece's end: "\s+(?!\S)" takes the spaces before "b" whole, which it
  // would not do on the whole text ("  b" gives " " then a gap " ")
  EXPECT_EQ(split({"[a-z]+", R"(\s+(?!\S))"}, "a  b  "), (std::vector<std::string>{"a", "  ", "b", "  "}));
  EXPECT_EQ(split({R"([a-z]+|\s+(?!\S))"}, "a  b"), (std::vector<std::string>{"a", " ", " ", "b"}));
}

TEST(PreTokenizer, NonAsciiWhitespaceIsWhitespace) {
  // U+0085 (NEL) and U+3000 count as \s for the regexes, as in llama.cpp and HF
  EXPECT_EQ(split({kGpt2Pattern}, "a\xC2\x85\xC2\x85" "b"), (std::vector<std::string>{"a", "\xC2\x85", "\xC2\x85", "b"}));
  EXPECT_EQ(split({kGpt2Pattern}, "a\xE3\x80\x80\xE3\x80\x80"), (std::vector<std::string>{"a", "\xE3\x80\x80\xE3\x80\x80"}));
}

TEST(PreTokenizer, InvalidUtf8IsReplacedNotFatal) {
  EXPECT_EQ(split({kGpt2Pattern}, "a\xFF" "b"), (std::vector<std::string>{"a", "\xEF\xBF\xBD", "b"}));
  // a surrogate is kept (re-encoded as is) and behaves like other \p{C} code points
  EXPECT_EQ(split({kGpt2Pattern}, "a \xED\xA0\x80!"), (std::vector<std::string>{"a", " \xED\xA0\x80!"}));
  EXPECT_EQ(split({}, "a\xFF"), (std::vector<std::string>{"a\xEF\xBF\xBD"}));
}

TEST(PreTokenizer, BadPatternAndUnknownNameAreErrors) {
  try {
    PreTokenizer({"(unclosed"}, "my.json");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("my.json"), std::string::npos);
  }
  EXPECT_THROW(pre_tokenizer_spec("no-such-pre"), Error);
  EXPECT_NO_THROW(pre_tokenizer_spec("qwen2"));
  EXPECT_TRUE(pre_tokenizer_spec("llama-bpe").ignore_merges);
  EXPECT_TRUE(pre_tokenizer_spec("llama-bpe").add_bos);
  EXPECT_FALSE(pre_tokenizer_spec("gpt-2").add_bos);
}

TEST(Base64, DecodesAndRejects) {
  std::string out;
  EXPECT_TRUE(base64_decode("SGVsbG8=", out));
  EXPECT_EQ(out, "Hello");
  out.clear();
  EXPECT_TRUE(base64_decode("IQ==", out));
  EXPECT_EQ(out, "!");
  out.clear();
  EXPECT_TRUE(base64_decode("////", out));
  EXPECT_EQ(out, "\xFF\xFF\xFF");
  out.clear();
  EXPECT_FALSE(base64_decode("SGVsbG8", out));   // length
  EXPECT_FALSE(base64_decode("SG*s", out));      // alphabet
  EXPECT_FALSE(base64_decode("S=Vs", out));      // padding inside
}

TEST(Tiktoken, ParsesRanksAndRejectsBadLines) {
  const auto t = parse_tiktoken("IQ== 0\nIg== 1\r\nSGk= 2\n", "t.model");
  EXPECT_EQ(t, (std::vector<std::string>{"!", "\"", "Hi"}));
  EXPECT_THROW(parse_tiktoken("IQ== 1\n", "t.model"), Error);          // rank out of order
  EXPECT_THROW(parse_tiktoken("IQ==\n", "t.model"), Error);            // no rank
  EXPECT_THROW(parse_tiktoken("I*== 0\n", "t.model"), Error);          // bad base64
  EXPECT_THROW(parse_tiktoken("IQ== x\n", "t.model"), Error);          // bad rank
  EXPECT_THROW(parse_tiktoken("", "t.model"), Error);                  // empty
  try {
    parse_tiktoken("IQ== 0\nIg== 5\n", "t.model");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("t.model:2"), std::string::npos) << e.what();
  }
  const auto special = llama3_special_tokens();
  ASSERT_EQ(special.size(), 256u);
  EXPECT_EQ(special[0], "<|begin_of_text|>");
  EXPECT_EQ(special[9], "<|eot_id|>");
  EXPECT_EQ(special[255], "<|reserved_special_token_250|>");
}

TEST(Nfd, FirstCodePointOfDecomposition) {
  EXPECT_EQ(nfd_first(0xC4), uint32_t('A'));     // Ä
  EXPECT_EQ(nfd_first(0x1EED), uint32_t('u'));   // ử
  EXPECT_EQ(nfd_first(0x212B), uint32_t('A'));   // Å (Angstrom sign)
  EXPECT_EQ(nfd_first(0xAC00), 0x1100u);         // 가 -> leading jamo
  EXPECT_EQ(nfd_first('a'), uint32_t('a'));
  EXPECT_EQ(nfd_first(0x4E00), 0x4E00u);
}

}  // namespace
