#include "tokenizer/tokenizer.h"

#include <fmt/format.h>

#include <cstdio>
#include <filesystem>

#include "core/error.h"
#include "io/gguf.h"
#include "tokenizer/spm.h"
#include "tokenizer/unicode.h"
#include "tokenizer/vocab_tokenizer.h"
#include "tokenizer/wpm.h"

namespace primal {

namespace {

const std::string kSpmSpace = "\xE2\x96\x81";  // "▁" U+2581, SentencePiece's visible space

std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  while (true) {
    const size_t m = s.find(from, pos);
    if (m == std::string_view::npos) break;
    out.append(s.substr(pos, m - pos));
    out.append(to);
    pos = m + from.size();
  }
  out.append(s.substr(pos));
  return out;
}

const char* kind_name(VocabKind k) {
  switch (k) {
    case VocabKind::SPM: return "SPM";
    case VocabKind::BPE: return "BPE";
    case VocabKind::WPM: return "WPM";
  }
  return "?";
}

}  // namespace

BpeModel& VocabTokenizer::init_bpe(std::vector<std::string> patterns, const std::string& origin,
                                   std::string pre_name) {
  pre_ = PreTokenizer(std::move(patterns), origin);
  pre_name_ = std::move(pre_name);
  bpe_ = std::make_unique<BpeModel>(vocab_);
  return *bpe_;
}

void VocabTokenizer::finish(const std::string& general_name, const std::string& origin, std::string source) {
  PRIMAL_CHECK(vocab_.n() > 0, "{}: the vocabulary has no tokens", origin);
  PRIMAL_CHECK(vocab_.kind != VocabKind::BPE || bpe_, "{}: BPE vocabulary without merges", origin);
  vocab_.finalize(general_name, origin);
  source_ = std::move(source);
  pieces_.resize(vocab_.n());
  for (int32_t id = 0; id < vocab_.n(); ++id) pieces_[id] = make_piece(id);
}

std::string VocabTokenizer::make_piece(int32_t id) const {
  const std::string& t = vocab_.text[id];
  const uint32_t a = vocab_.attr[id];
  if (a & (tok_attr::kUnknown | tok_attr::kControl | tok_attr::kUserDefined)) return t;
  if (a & tok_attr::kByte) {
    // "<0xXX>"
    if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>') {
      return std::string(1, char(std::stoi(t.substr(3, 2), nullptr, 16)));
    }
    return std::string();
  }
  if (!(a & tok_attr::kNormal)) return std::string();  // unused / undefined: llama.cpp prints nothing
  if (vocab_.kind != VocabKind::BPE) return replace_all(t, kSpmSpace, " ");
  // Byte-level BPE: every character stands for one byte. A character outside the GPT-2 alphabet is
  // shown the way llama.cpp shows it.
  std::string out;
  size_t pos = 0;
  while (pos < t.size()) {
    const size_t start = pos;
    const int b = unicode::cpt_to_byte(unicode::decode_one(t, pos));
    if (b >= 0) {
      out.push_back(char(b));
      continue;
    }
    out += "[UNK_BYTE_0x";
    for (size_t k = start; k < pos; ++k) out += fmt::format("{:02x}", uint8_t(t[k]));
    out += t + "]";
  }
  return out;
}

std::vector<int32_t> VocabTokenizer::encode(std::string_view text, bool add_special, bool parse_special) const {
  std::vector<int32_t> out;
  const std::vector<Fragment> frags = partition_special(vocab_, text, parse_special);
  switch (vocab_.kind) {
    case VocabKind::SPM: {
      if (add_special && vocab_.add_bos) out.push_back(vocab_.bos);
      // llama.cpp puts the SentencePiece space before the first text and after every special token.
      bool prev_special = true;
      for (const Fragment& f : frags) {
        if (f.token >= 0) {
          out.push_back(f.token);
          prev_special = true;
          continue;
        }
        std::string t = vocab_.add_space_prefix && prev_special ? " " : "";
        t.append(text.substr(f.offset, f.length));
        spm_encode(vocab_, replace_all(t, " ", kSpmSpace), out);
        prev_special = false;
      }
      if (add_special && vocab_.add_eos) out.push_back(vocab_.eos);
      break;
    }
    case VocabKind::BPE: {
      if (add_special && vocab_.add_bos) out.push_back(vocab_.bos);
      for (const Fragment& f : frags) {
        if (f.token >= 0) {
          out.push_back(f.token);
          continue;
        }
        for (const std::string& w : pre_.split(text.substr(f.offset, f.length))) bpe_->encode_word(w, out);
      }
      if (add_special && vocab_.add_eos) out.push_back(vocab_.eos);
      break;
    }
    case VocabKind::WPM: {
      // BERT: [CLS] text [SEP] (llama.cpp adds both whenever add_special is set)
      if (add_special && vocab_.bos >= 0) out.push_back(vocab_.bos);
      for (const Fragment& f : frags) {
        if (f.token >= 0) {
          out.push_back(f.token);
          continue;
        }
        wpm_encode(vocab_, wpm_.lowercase, wpm_.strip_accents, text.substr(f.offset, f.length), out);
      }
      if (add_special && vocab_.sep >= 0) out.push_back(vocab_.sep);
      break;
    }
  }
  return out;
}

void VocabTokenizer::check_id(int32_t id) const {
  PRIMAL_CHECK(vocab_.valid(id), "token id {} is out of range (the vocabulary has {} tokens)", id, vocab_.n());
}

std::string VocabTokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  std::string out;
  // SentencePiece's added space comes off the first text token (after a leading BOS).
  const size_t first = !ids.empty() && ids[0] == vocab_.bos && vocab_.bos >= 0 ? 1 : 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    check_id(id);
    if (skip_special && is_special(id)) continue;
    std::string_view p = pieces_[id];
    if (vocab_.add_space_prefix && i == first && !p.empty() && p[0] == ' ') p.remove_prefix(1);
    out.append(p);
  }
  return out;
}

std::string VocabTokenizer::token_to_piece(int32_t id) const {
  check_id(id);
  return pieces_[id];
}

const std::string& VocabTokenizer::token_text(int32_t id) const {
  check_id(id);
  return vocab_.text[id];
}

bool VocabTokenizer::is_special(int32_t id) const {
  return vocab_.valid(id) && (vocab_.attr[id] & (tok_attr::kControl | tok_attr::kUnknown));
}

std::string VocabTokenizer::describe() const {
  std::string s = fmt::format("{}", kind_name(vocab_.kind));
  if (vocab_.kind == VocabKind::BPE) {
    s += fmt::format(" (pre-tokenizer {}, {} merges{})", pre_name_.empty() ? "none" : pre_name_,
                     bpe_->n_merges(), bpe_->ignore_merges ? ", whole-word tokens first" : "");
  }
  s += fmt::format(", {} tokens", vocab_.n());
  auto tok = [&](const char* name, int32_t id) {
    if (id >= 0) s += fmt::format(", {} {} '{}'", name, id, vocab_.text[id]);
  };
  tok("bos", vocab_.bos);
  tok("eos", vocab_.eos);
  tok("unk", vocab_.unk);
  s += fmt::format(", add_bos {}, add_eos {}", vocab_.add_bos, vocab_.add_eos);
  if (!source_.empty()) s += ", from " + source_;
  return s;
}

std::unique_ptr<Tokenizer> Tokenizer::open(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(path, ec)) return from_hf_dir(path);
  PRIMAL_CHECK(fs::exists(path, ec), "{}: no such file or folder", path);
  if (fs::path(path).filename() == "tokenizer.json") return from_hf_dir(fs::path(path).parent_path().string());
  char magic[4] = {0, 0, 0, 0};
  if (FILE* f = std::fopen(path.c_str(), "rb")) {
    const size_t got = std::fread(magic, 1, 4, f);
    std::fclose(f);
    if (got == 4 && std::string_view(magic, 4) == "GGUF") {
      GgufFile g(path);
      return from_gguf(g);
    }
  } else {
    fail("{}: cannot open", path);
  }
  try {
    return from_tiktoken(path);
  } catch (const Error& e) {
    fail("{}: not a GGUF file, an HF folder or a tiktoken rank file (read as tiktoken: {})", path, e.what());
  }
}

}  // namespace primal
