// Tokenizer::from_gguf: the tokenizer.ggml.* metadata of a model or vocab-only GGUF, read with
// llama.cpp's defaults (llama_vocab::impl::load).
#include <algorithm>

#include "core/error.h"
#include "io/gguf.h"
#include "tokenizer/vocab_tokenizer.h"

namespace primal {

namespace {

// tokenizer.ggml.<key>_token_id into `slot` when present (llama.cpp keeps the default for an id
// outside the vocabulary; finalize() drops defaults that are outside it).
void read_id(const GgufFile& f, const char* key, int32_t n, int32_t& slot) {
  const std::string k = std::string("tokenizer.ggml.") + key;
  if (!f.has(k)) return;
  const int64_t id = f.get_int(k);
  if (id >= 0 && id < n) slot = int32_t(id);
}

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::from_gguf(const GgufFile& f) {
  const std::string& path = f.path();
  PRIMAL_CHECK(f.has("tokenizer.ggml.model"), "{}: no tokenizer in this file (tokenizer.ggml.model is missing)", path);
  const std::string model = f.get_str("tokenizer.ggml.model");
  const std::string pre = f.get_str("tokenizer.ggml.pre", "");

  VocabKind kind;
  if (model == "llama") {
    kind = VocabKind::SPM;
  } else if (model == "gpt2") {
    kind = VocabKind::BPE;
  } else if (model == "bert") {
    kind = VocabKind::WPM;
  } else if (model == "no_vocab" || model == "none") {
    fail("{}: the model has no vocabulary (tokenizer.ggml.model = '{}')", path, model);
  } else {
    fail("{}: unsupported tokenizer model '{}' (supported: llama (SentencePiece), gpt2 (byte-level BPE), "
         "bert (WordPiece))", path, model);
  }
  auto tok = std::make_unique<VocabTokenizer>(kind);
  Vocab& v = tok->vocab();

  const std::vector<std::string> tokens = f.get_strings("tokenizer.ggml.tokens");
  const size_t n = tokens.size();
  PRIMAL_CHECK(n > 0 && n < (size_t(1) << 31), "{}: tokenizer.ggml.tokens has {} entries", path, n);
  std::vector<float> scores;
  if (f.has("tokenizer.ggml.scores")) {
    scores = f.get_floats("tokenizer.ggml.scores");
    PRIMAL_CHECK(scores.size() >= n, "{}: tokenizer.ggml.scores has {} entries for {} tokens", path, scores.size(), n);
  }
  std::vector<int64_t> types;
  if (f.has("tokenizer.ggml.token_type")) {
    types = f.get_ints("tokenizer.ggml.token_type");
    PRIMAL_CHECK(types.size() >= n, "{}: tokenizer.ggml.token_type has {} entries for {} tokens", path, types.size(), n);
  }
  for (size_t i = 0; i < n; ++i) {
    v.add(tokens[i], scores.empty() ? 0.0f : scores[i],
          types.empty() ? tok_attr::kNormal : tok_attr::from_gguf_type(types[i]), path);
  }

  // Defaults per model type, then the metadata (llama.cpp's order).
  const int32_t nv = v.n();
  switch (kind) {
    case VocabKind::SPM:
      v.bos = 1, v.eos = 2, v.unk = 0;
      v.add_space_prefix = true;
      v.add_bos = true;
      break;
    case VocabKind::BPE: {
      v.bos = 11, v.eos = 11;  // llama.cpp's (odd) BPE default, overridden by every real file
      const PreTokenizerSpec spec = pre_tokenizer_spec(pre, path);  // throws for an unknown name
      v.add_bos = spec.add_bos;
      BpeModel& bpe = tok->init_bpe(spec.patterns, path, pre.empty() ? "default" : pre);
      bpe.ignore_merges = spec.ignore_merges;
      const std::vector<std::string> merges = f.get_strings("tokenizer.ggml.merges");
      for (size_t i = 0; i < merges.size(); ++i) {
        // "left right", split at the first space after the first byte (llama.cpp's rule)
        const std::string& m = merges[i];
        const size_t sp = m.find(' ', 1);
        if (sp == std::string::npos) continue;  // llama.cpp would record an empty pair; it never matches
        bpe.add_merge(std::string_view(m).substr(0, sp), std::string_view(m).substr(sp + 1), int32_t(i));
      }
      break;
    }
    case VocabKind::WPM: {
      v.bos = 101, v.unk = 100, v.sep = 102, v.pad = 0, v.mask = 103;
      v.add_bos = true;
      v.add_sep = true;
      WpmOptions o;
      o.lowercase = f.get_bool("tokenizer.ggml.normalizer.lowercase", true);
      o.strip_accents = f.get_bool("tokenizer.ggml.normalizer.strip_accents", o.lowercase);
      tok->set_wpm_options(o);
      break;
    }
  }
  // Only SentencePiece adds the space; llama.cpp reads the key for every kind but uses it there.
  if (kind == VocabKind::SPM) v.add_space_prefix = f.get_bool("tokenizer.ggml.add_space_prefix", true);

  read_id(f, "bos_token_id", nv, v.bos);
  read_id(f, "eos_token_id", nv, v.eos);
  read_id(f, "eot_token_id", nv, v.eot);
  read_id(f, "eom_token_id", nv, v.eom);
  read_id(f, "unknown_token_id", nv, v.unk);
  read_id(f, "seperator_token_id", nv, v.sep);  // sic: llama.cpp's key
  read_id(f, "padding_token_id", nv, v.pad);
  read_id(f, "mask_token_id", nv, v.mask);
  read_id(f, "prefix_token_id", nv, v.fim_pre);
  read_id(f, "suffix_token_id", nv, v.fim_suf);
  read_id(f, "middle_token_id", nv, v.fim_mid);
  read_id(f, "fim_pre_token_id", nv, v.fim_pre);
  read_id(f, "fim_suf_token_id", nv, v.fim_suf);
  read_id(f, "fim_mid_token_id", nv, v.fim_mid);
  read_id(f, "fim_pad_token_id", nv, v.fim_pad);
  read_id(f, "fim_rep_token_id", nv, v.fim_rep);
  read_id(f, "fim_sep_token_id", nv, v.fim_sep);
  v.add_bos = f.get_bool("tokenizer.ggml.add_bos_token", v.add_bos);
  v.add_eos = f.get_bool("tokenizer.ggml.add_eos_token", v.add_eos);
  v.add_sep = f.get_bool("tokenizer.ggml.add_sep_token", v.add_sep);

  tok->finish(f.get_str("general.name", ""), path, path);
  return tok;
}

}  // namespace primal
