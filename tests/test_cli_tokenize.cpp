// `primal tokenize` as a user runs it: ids on stdout and nothing else, --pieces, --decode, BOS and
// special-token flags, -f, the three model kinds, and "primal: error: ..." with exit code 1.
#include <gtest/gtest.h>

#include <fstream>

#include "testing.h"

using primal::test::data_path;
using primal::test::run_primal;

namespace {

std::string gpt2() { return "-m " + data_path("vocab/ggml-vocab-gpt-2.gguf"); }

TEST(CliTokenize, PrintsIdsOnOneLine) {
  const auto r = run_primal("tokenize " + gpt2() + " 'Hello world'");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "15496 995\n");
  // several words without quotes are one text
  EXPECT_EQ(run_primal("tokenize " + gpt2() + " Hello world").out, "15496 995\n");
  EXPECT_EQ(run_primal("tokenize " + gpt2() + " -p 'Hello world'").out, "15496 995\n");
}

TEST(CliTokenize, BosAsTheMetadataSaysAndNoBos) {
  const std::string spm = "-m " + data_path("vocab/ggml-vocab-llama-spm.gguf");
  EXPECT_EQ(run_primal("tokenize " + spm + " 'Hello world'").out, "1 15043 3186\n");
  EXPECT_EQ(run_primal("tokenize " + spm + " --no-bos 'Hello world'").out, "15043 3186\n");
  const std::string llama3 = "-m " + data_path("vocab/llama3/tokenizer.model");
  EXPECT_EQ(run_primal("tokenize " + llama3 + " 'Hello world'").out, "128000 9906 1917\n");
}

TEST(CliTokenize, ParseSpecial) {
  EXPECT_EQ(run_primal("tokenize " + gpt2() + " --parse-special 'a<|endoftext|>b'").out, "64 50256 65\n");
  const auto plain = run_primal("tokenize " + gpt2() + " 'a<|endoftext|>b'");
  EXPECT_EQ(plain.exit_code, 0);
  EXPECT_EQ(plain.out.find("50256"), std::string::npos) << plain.out;
}

TEST(CliTokenize, PiecesAndDecode) {
  const auto p = run_primal("tokenize " + gpt2() + " --pieces 'Hi\n there'");
  EXPECT_EQ(p.exit_code, 0) << p.err;
  EXPECT_EQ(p.out, "  17250 'Hi'\n    198 '\\n'\n    612 ' there'\n");
  const auto d = run_primal("tokenize " + gpt2() + " --decode '15496 995'");
  EXPECT_EQ(d.exit_code, 0) << d.err;
  EXPECT_EQ(d.out, "Hello world\n");
  EXPECT_EQ(run_primal("tokenize " + gpt2() + " --decode '[15496, 50256, 995]'").out, "Hello<|endoftext|> world\n");
  EXPECT_EQ(run_primal("tokenize " + gpt2() + " --decode --skip-special 15496,50256,995").out, "Hello world\n");
}

TEST(CliTokenize, FileAndHfFolder) {
  const std::string file = primal::test::temp_dir() + "/prompt.txt";
  std::ofstream(file, std::ios::binary) << "def fibonacci(n):\n";
  // the ids of reference.json's first prompt
  const std::string want = "4299 12900 261 44456 7 77 2599 198\n";
  EXPECT_EQ(run_primal("tokenize " + gpt2() + " -f " + file).out, want);
  const auto hf = run_primal("tokenize -m " + data_path("models/ref-llama-code") + " -f " + file);
  EXPECT_EQ(hf.exit_code, 0) << hf.err;
  EXPECT_EQ(hf.out, want);
  const auto q8 = run_primal("tokenize -m " + data_path("models/ref-llama-code/ref-llama-code-Q8_0.gguf") + " -f " + file);
  EXPECT_EQ(q8.out, want);
}

TEST(CliTokenize, ErrorsAreClear) {
  const auto missing = run_primal("tokenize -m /no/such/model 'x'");
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_EQ(missing.out, "");
  EXPECT_EQ(missing.err.rfind("primal: error: ", 0), 0u) << missing.err;
  EXPECT_NE(missing.err.find("/no/such/model"), std::string::npos) << missing.err;

  const auto bad_id = run_primal("tokenize " + gpt2() + " --decode '1 99999'");
  EXPECT_EQ(bad_id.exit_code, 1);
  EXPECT_NE(bad_id.err.find("99999"), std::string::npos) << bad_id.err;
  const auto not_id = run_primal("tokenize " + gpt2() + " --decode 'one'");
  EXPECT_EQ(not_id.exit_code, 1);
  EXPECT_NE(not_id.err.find("'one'"), std::string::npos) << not_id.err;

  const auto no_text = run_primal("tokenize " + gpt2());
  EXPECT_EQ(no_text.exit_code, 1);
  EXPECT_NE(no_text.err.find("no text"), std::string::npos) << no_text.err;
  const auto two = run_primal("tokenize " + gpt2() + " -p a b");
  EXPECT_EQ(two.exit_code, 1);

  const auto not_model = run_primal("tokenize -m " + data_path("text/tinyshakespeare.txt") + " x");
  EXPECT_EQ(not_model.exit_code, 1);
  EXPECT_NE(not_model.err.find("tinyshakespeare.txt"), std::string::npos) << not_model.err;
}

TEST(CliTokenize, Help) {
  const auto h = run_primal("tokenize --help");
  EXPECT_EQ(h.exit_code, 0);
  for (const char* s : {"--model", "--pieces", "--decode", "--no-bos", "--parse-special", "--file", "tokenizer.model"}) {
    EXPECT_NE(h.out.find(s), std::string::npos) << s;
  }
}

}  // namespace
