// Tokenizers that match the reference implementations id for id: SentencePiece-style (scores,
// byte fallback), byte-level BPE with the pre-tokenizer of each vocabulary (gpt2, llama3, qwen2,
// deepseek, falcon, starcoder, ...), WordPiece (BERT), tiktoken rank files, and HF tokenizer.json
// (byte-level BPE). The one implementation is VocabTokenizer (vocab_tokenizer.h); the loaders are
// gguf_vocab.cpp, hf_tokenizer.cpp and tiktoken.cpp. Encoding is thread-safe.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace primal {

class GgufFile;

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // From tokenizer.ggml.* metadata (a model or a vocab-only GGUF).
  static std::unique_ptr<Tokenizer> from_gguf(const GgufFile& f);
  // From an HF checkpoint folder (tokenizer.json + tokenizer_config.json).
  static std::unique_ptr<Tokenizer> from_hf_dir(const std::string& dir);
  // From a tiktoken rank file (Llama 3's tokenizer.model) with the Llama 3 special tokens.
  static std::unique_ptr<Tokenizer> from_tiktoken(const std::string& path);
  // Any of the above, by what `path` is: a GGUF file, an HF folder (or its tokenizer.json), or
  // else a tiktoken rank file.
  static std::unique_ptr<Tokenizer> open(const std::string& path);

  // Encode text. add_special: add BOS/EOS as the vocabulary's metadata says (add_bos / add_eos);
  // parse_special: text like "<|endoftext|>" becomes the special token instead of plain text.
  // Invalid UTF-8 is handled as the reference tokenizer handles it; never throws for bad text.
  virtual std::vector<int32_t> encode(std::string_view text, bool add_special = true,
                                      bool parse_special = false) const = 0;
  // Decode ids to text (byte-exact inverse of encode for ordinary text: llama.cpp's optional
  // clean-up of " ," / " 's" spaces is not applied; SentencePiece's added leading space is removed).
  // skip_special leaves control/unknown tokens out. Throws Error for an id outside the vocabulary.
  virtual std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const = 0;
  // The text one token stands for (bytes, possibly a partial UTF-8 sequence).
  virtual std::string token_to_piece(int32_t id) const = 0;
  // The raw vocabulary entry (e.g. "Ġthe"), for --pieces.
  virtual const std::string& token_text(int32_t id) const = 0;
  // One line for humans: kind, pre-tokenizer, size, special ids, source.
  virtual std::string describe() const = 0;

  virtual int32_t n_vocab() const = 0;
  virtual int32_t bos_id() const = 0;    // -1 when none
  virtual int32_t eos_id() const = 0;    // -1 when none
  virtual bool add_bos() const = 0;
  virtual bool add_eos() const = 0;
  virtual bool is_eog(int32_t id) const = 0;  // end of generation (eos, eot, <|im_end|>, ...)
  virtual bool is_special(int32_t id) const = 0;
};

}  // namespace primal
