// The one Tokenizer implementation: a Vocab plus the model of its kind (SPM scores, byte-level BPE
// with a regex pre-tokenizer, WordPiece). The loaders (GGUF, tokenizer.json, tiktoken) fill it and
// call finish().
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "tokenizer/bpe.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/vocab.h"

namespace primal {

struct WpmOptions {
  bool lowercase = true;      // BertNormalizer lowercase
  bool strip_accents = true;  // BertNormalizer strip_accents (defaults to lowercase)
};

class VocabTokenizer final : public Tokenizer {
 public:
  explicit VocabTokenizer(VocabKind kind) { vocab_.kind = kind; }

  Vocab& vocab() { return vocab_; }
  const Vocab& vocab() const { return vocab_; }
  // BPE only, after the tokens are added: the pre-tokenizer and an empty merge table to fill.
  BpeModel& init_bpe(std::vector<std::string> patterns, const std::string& origin, std::string pre_name);
  void set_wpm_options(WpmOptions o) { wpm_ = o; }
  // Last step of every loader: vocabulary rules (see Vocab::finalize) and the piece table.
  void finish(const std::string& general_name, const std::string& origin, std::string source);

  std::vector<int32_t> encode(std::string_view text, bool add_special = true,
                              bool parse_special = false) const override;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const override;
  std::string token_to_piece(int32_t id) const override;
  const std::string& token_text(int32_t id) const override;
  std::string describe() const override;

  int32_t n_vocab() const override { return vocab_.n(); }
  int32_t bos_id() const override { return vocab_.bos; }
  int32_t eos_id() const override { return vocab_.eos; }
  bool add_bos() const override { return vocab_.add_bos; }
  bool add_eos() const override { return vocab_.add_eos; }
  bool is_eog(int32_t id) const override { return vocab_.eog.count(id) > 0; }
  bool is_special(int32_t id) const override;

 private:
  void check_id(int32_t id) const;
  std::string make_piece(int32_t id) const;

  Vocab vocab_;
  std::unique_ptr<BpeModel> bpe_;
  PreTokenizer pre_;
  std::string pre_name_;
  WpmOptions wpm_;
  std::vector<std::string> pieces_;  // (n_vocab) token_to_piece, computed once
  std::string source_;               // where it was loaded from, for describe()
};

}  // namespace primal
