#include <gtest/gtest.h>

#include "core/error.h"
#include "io/gguf.h"
#include "testing.h"

using namespace primal;

TEST(GgufReader, VocabOnlyFile) {
  GgufFile f(test::data_path("vocab/ggml-vocab-gpt-2.gguf"));
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.get_str("tokenizer.ggml.model"), "gpt2");
  const auto tokens = f.get_strings("tokenizer.ggml.tokens");
  EXPECT_EQ(tokens.size(), 50257u);
  EXPECT_EQ(tokens[50256], "<|endoftext|>");
  EXPECT_TRUE(f.tensors().empty());
}

TEST(GgufReader, RefModelQ8_0) {
  GgufFile f(test::data_path("models/ref-llama-code/ref-llama-code-Q8_0.gguf"));
  EXPECT_EQ(f.get_str("general.architecture"), "llama");
  EXPECT_EQ(f.get_int("llama.block_count"), 8);
  EXPECT_EQ(f.get_int("llama.embedding_length"), 256);
  const auto& q = f.tensor("blk.0.attn_q.weight");
  EXPECT_EQ(q.type, DType::Q8_0);
  ASSERT_EQ(q.ne.size(), 2u);
  EXPECT_EQ(q.ne[0], 256);
  EXPECT_EQ(q.ne[1], 256);
  EXPECT_EQ(q.nbytes, size_t(256 * 256 / 32 * 34));
}

TEST(GgufReader, MissingKeyNamesFileAndKey) {
  GgufFile f(test::data_path("vocab/ggml-vocab-gpt-2.gguf"));
  try {
    f.get_int("no.such.key");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no.such.key"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("ggml-vocab-gpt-2.gguf"), std::string::npos);
  }
}

TEST(GgufReader, RejectsBadMagicAndTruncation) {
  const uint8_t junk[] = {'G', 'G', 'U', 'X', 3, 0, 0, 0};
  EXPECT_THROW(GgufFile::from_buffer(junk, sizeof junk, "junk"), Error);
  const uint8_t trunc[] = {'G', 'G', 'U', 'F', 3, 0, 0, 0, 1, 0};
  EXPECT_THROW(GgufFile::from_buffer(trunc, sizeof trunc, "trunc"), Error);
}
