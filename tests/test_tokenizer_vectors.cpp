// Conformance with llama.cpp's tokenizer test vectors (vocab/NAME.gguf.inp / .out): every case of
// every vocabulary present must give the expected ids exactly, with add_special = false and
// parse_special = false as in llama.cpp's tests/test-tokenizer-0.cpp. The inputs are separated by
// "\n__ggml_vocab_test__\n" (that separator's newlines belong to it, not to the inputs).
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "io/gguf.h"
#include "testing.h"
#include "tokenizer/tokenizer.h"

using namespace primal;

namespace {

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct Case {
  std::string text;
  std::vector<int32_t> ids;
};

std::vector<Case> read_cases(const std::string& name) {
  const std::string raw = slurp(test::data_path("vocab/ggml-vocab-" + name + ".gguf.inp"));
  const std::string out = slurp(test::data_path("vocab/ggml-vocab-" + name + ".gguf.out"));
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> inputs;
  for (size_t pos = 0; pos < raw.size();) {
    const size_t next = raw.find(sep, pos);
    if (next == std::string::npos) {
      inputs.push_back(raw.substr(pos));
      break;
    }
    inputs.push_back(raw.substr(pos, next - pos));
    pos = next + sep.size();
  }
  std::vector<std::vector<int32_t>> outputs;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    std::istringstream ids(line);
    outputs.emplace_back();
    for (int32_t id; ids >> id;) outputs.back().push_back(id);
  }
  EXPECT_EQ(inputs.size(), outputs.size()) << name;
  std::vector<Case> cases;
  for (size_t i = 0; i < inputs.size() && i < outputs.size(); ++i) cases.push_back({inputs[i], outputs[i]});
  return cases;
}

std::string show(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) s += std::to_string(id) + " ";
  return s;
}

struct VectorSet {
  const char* name;          // NAME of ggml-vocab-NAME.gguf.inp/.out
  const char* vocab;         // tokenizer source under the data folder
  bool round_trip;           // decode(encode(s)) == s for every input
  size_t expected_cases;     // guards against a silently truncated file
};

// gtest prints the parameter by this (instead of its bytes)
void PrintTo(const VectorSet& v, std::ostream* os) { *os << v.name; }

std::unique_ptr<Tokenizer> load(const std::string& rel) { return Tokenizer::open(test::data_path(rel)); }

class TokenizerVectors : public ::testing::TestWithParam<VectorSet> {};

TEST_P(TokenizerVectors, EveryCaseMatches) {
  const VectorSet& p = GetParam();
  const auto tok = load(p.vocab);
  const std::vector<Case> cases = read_cases(p.name);
  ASSERT_EQ(cases.size(), p.expected_cases);
  size_t passed = 0, round_trips = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const std::vector<int32_t> got = tok->encode(c.text, /*add_special=*/false, /*parse_special=*/false);
    EXPECT_EQ(got, c.ids) << p.name << " case " << i << " '" << c.text << "'\n  expected " << show(c.ids)
                          << "\n  got      " << show(got);
    passed += got == c.ids;
    if (p.round_trip) {
      EXPECT_EQ(tok->decode(got), c.text) << p.name << " case " << i;
      round_trips += tok->decode(got) == c.text;
    }
  }
  std::printf("[ %-14s ] %zu/%zu cases match the reference ids", p.name, passed, cases.size());
  if (p.round_trip) std::printf(", %zu/%zu decode back to the input", round_trips, cases.size());
  std::printf("\n");
  RecordProperty("cases_passed", int(passed));
}

INSTANTIATE_TEST_SUITE_P(
    AllVocabularies, TokenizerVectors,
    ::testing::Values(VectorSet{"llama-spm", "vocab/ggml-vocab-llama-spm.gguf", true, 46},
                      VectorSet{"phi-3", "vocab/ggml-vocab-phi-3.gguf", true, 46},
                      VectorSet{"gpt-2", "vocab/ggml-vocab-gpt-2.gguf", true, 46},
                      VectorSet{"deepseek-llm", "vocab/ggml-vocab-deepseek-llm.gguf", true, 46},
                      VectorSet{"deepseek-coder", "vocab/ggml-vocab-deepseek-coder.gguf", true, 46},
                      VectorSet{"falcon", "vocab/ggml-vocab-falcon.gguf", true, 46},
                      VectorSet{"mpt", "vocab/ggml-vocab-mpt.gguf", true, 46},
                      VectorSet{"refact", "vocab/ggml-vocab-refact.gguf", true, 46},
                      VectorSet{"starcoder", "vocab/ggml-vocab-starcoder.gguf", true, 46},
                      // WordPiece lowercases, strips accents and drops spaces: no round trip
                      VectorSet{"bert-bge", "vocab/ggml-vocab-bert-bge.gguf", false, 46},
                      // Llama 3 has no vocab GGUF here: its tiktoken file is the vocabulary
                      VectorSet{"llama-bpe", "vocab/llama3/tokenizer.model", true, 46}),
    [](const ::testing::TestParamInfo<VectorSet>& info) {
      std::string n = info.param.name;
      for (char& ch : n) {
        if (ch == '-') ch = '_';
      }
      return n;
    });

// The two vocabularies without test vectors: they load, and text comes back byte for byte.
TEST(TokenizerVocabsWithoutVectors, GptNeoxAndBaichuanRoundTrip) {
  const std::string text = slurp(test::data_path("vocab/ggml-vocab-gpt-2.gguf.inp"));
  for (const char* v : {"vocab/ggml-vocab-gpt-neox.gguf", "vocab/ggml-vocab-baichuan.gguf"}) {
    const auto tok = load(v);
    const std::vector<int32_t> ids = tok->encode(text, false, false);
    EXPECT_GT(ids.size(), 300u) << v;
    EXPECT_LT(ids.size(), text.size()) << v;
    EXPECT_EQ(tok->decode(ids), text) << v;
  }
}

}  // namespace
