// Shared pieces of the training tests: a byte-level BPE vocabulary small enough for tiny models
// (the 256 GPT-2 byte symbols plus <|endoftext|>, no merges: one token per byte), written as a
// vocabulary-only GGUF that Tokenizer::open and `primal train --tokenizer` read.
#pragma once
#include <string>
#include <vector>

#include "io/gguf_writer.h"

namespace primal::test {

// GPT-2's byte -> symbol map: printable Latin-1 bytes stand for themselves, the others are
// shifted to U+0100 and up. Returns the UTF-8 of byte b's symbol.
inline std::string gpt2_byte_symbol(int b) {
  const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
  int cp = b;
  if (!printable) {
    int n = 0;
    for (int k = 0; k < b; ++k) {
      const bool p = (k >= '!' && k <= '~') || (k >= 0xA1 && k <= 0xAC) || (k >= 0xAE && k <= 0xFF);
      n += !p;
    }
    cp = 256 + n;
  }
  std::string s;
  if (cp < 0x80) s += char(cp);
  else s += char(0xC0 | (cp >> 6)), s += char(0x80 | (cp & 0x3F));
  return s;
}

// Writes the vocabulary GGUF (257 tokens, EOS = BOS = 256) to `path`.
inline void write_byte_vocab(const std::string& path) {
  GgufWriter w;
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  for (int b = 0; b < 256; ++b) tokens.push_back(gpt2_byte_symbol(b)), types.push_back(1);
  tokens.push_back("<|endoftext|>");
  types.push_back(3);  // control
  w.add_kv("general.architecture", GgufValue::string("llama"));
  w.add_kv("tokenizer.ggml.model", GgufValue::string("gpt2"));
  w.add_kv("tokenizer.ggml.pre", GgufValue::string("gpt-2"));
  w.add_kv("tokenizer.ggml.tokens", GgufValue::strings(tokens));
  w.add_kv("tokenizer.ggml.token_type", GgufValue::i32s(types));
  w.add_kv("tokenizer.ggml.merges", GgufValue::strings({}));
  w.add_kv("tokenizer.ggml.bos_token_id", GgufValue::u32(256));
  w.add_kv("tokenizer.ggml.eos_token_id", GgufValue::u32(256));
  w.write(path);
}

}  // namespace primal::test
