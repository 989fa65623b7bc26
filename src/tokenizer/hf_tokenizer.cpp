// Tokenizer::from_hf_dir: a Hugging Face `tokenizer.json` whose model is byte-level BPE (GPT-2,
// Llama 3, Qwen2, StarCoder, DeepSeek ... checkpoints), plus `tokenizer_config.json` for BOS/EOS.
//
// Supported: model.type "BPE" with vocab, merges ("a b" strings or ["a", "b"] pairs), ignore_merges;
// added_tokens (special ones become control tokens, parsed from text only with parse_special; the
// others are user-defined tokens, always matched first, as HF does); pre_tokenizer ByteLevel
// (use_regex: the GPT-2 pattern), Split (Regex/String pattern, behavior Isolated), Digits,
// Punctuation, and Sequence of these; normalizer null or NFC (taken as identity: text that is
// already NFC, which is nearly all text, is unaffected). Anything else (WordPiece, Unigram,
// Metaspace / SentencePiece-style BPE with byte_fallback, ...) is refused with an Error naming the
// file and the feature.
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "tokenizer/vocab_tokenizer.h"

namespace primal {

namespace {

using json = nlohmann::json;

json read_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  PRIMAL_CHECK(in, "{}: cannot open", path);
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    fail("{}: not valid JSON: {}", path, e.what());
  }
}

const json& member(const json& j, const char* key, const std::string& path, const char* where) {
  PRIMAL_CHECK(j.is_object() && j.contains(key), "{}: {} has no '{}'", path, where, key);
  return j.at(key);
}

std::string str_or(const json& j, const char* key, const std::string& def) {
  if (!j.is_object() || !j.contains(key) || !j.at(key).is_string()) return def;
  return j.at(key).get<std::string>();
}

// "\Q...\E" quoting for a literal Split pattern (an \E inside is split out).
std::string quote_literal(const std::string& s) {
  std::string out = "\\Q";
  size_t pos = 0;
  for (size_t m; (m = s.find("\\E", pos)) != std::string::npos; pos = m + 2) {
    out += s.substr(pos, m - pos) + "\\E\\\\E\\Q";
  }
  return out + s.substr(pos) + "\\E";
}

struct PreTokSpec {
  std::vector<std::string> patterns;
  bool byte_level = false;
};

void read_pre_tokenizer(const json& p, const std::string& path, PreTokSpec& out) {
  if (p.is_null()) return;
  const std::string type = str_or(p, "type", "");
  if (type == "Sequence") {
    for (const json& q : member(p, "pretokenizers", path, "pre_tokenizer Sequence")) read_pre_tokenizer(q, path, out);
  } else if (type == "ByteLevel") {
    out.byte_level = true;
    PRIMAL_CHECK(!p.value("add_prefix_space", false), "{}: pre_tokenizer ByteLevel with add_prefix_space is not supported", path);
    if (p.value("use_regex", true)) out.patterns.push_back(kGpt2Pattern);
  } else if (type == "Split") {
    const std::string behavior = str_or(p, "behavior", "");
    PRIMAL_CHECK(behavior == "Isolated" && !p.value("invert", false),
                 "{}: pre_tokenizer Split with behavior '{}'{} is not supported (only Isolated)", path, behavior,
                 p.value("invert", false) ? " and invert" : "");
    const json& pat = member(p, "pattern", path, "pre_tokenizer Split");
    if (pat.contains("Regex")) {
      out.patterns.push_back(pat.at("Regex").get<std::string>());
    } else if (pat.contains("String")) {
      out.patterns.push_back(quote_literal(pat.at("String").get<std::string>()));
    } else {
      fail("{}: pre_tokenizer Split pattern must be Regex or String", path);
    }
  } else if (type == "Digits") {
    out.patterns.push_back(p.value("individual_digits", false) ? R"(\p{N})" : R"(\p{N}+)");
  } else if (type == "Punctuation") {
    // HF: ASCII punctuation or a Unicode P* character
    const std::string behavior = str_or(p, "behavior", "Isolated");
    PRIMAL_CHECK(behavior == "Isolated" || behavior == "Contiguous",
                 "{}: pre_tokenizer Punctuation with behavior '{}' is not supported", path, behavior);
    out.patterns.push_back(std::string(R"([\p{P}!-/:-@\[-`{-~])") + (behavior == "Contiguous" ? "+" : ""));
  } else {
    fail("{}: pre_tokenizer '{}' is not supported (byte-level BPE tokenizers only)", path, type);
  }
}

// TemplateProcessing "single": special tokens before $A are BOS, after it EOS.
void read_template(const json& pp, std::string& bos, std::string& eos, bool& add_bos, bool& add_eos) {
  if (!pp.is_object()) return;
  const std::string type = str_or(pp, "type", "");
  if (type == "Sequence" && pp.contains("processors")) {
    for (const json& q : pp.at("processors")) read_template(q, bos, eos, add_bos, add_eos);
    return;
  }
  if (type != "TemplateProcessing" || !pp.contains("single")) return;
  bool seen_seq = false;
  for (const json& item : pp.at("single")) {
    if (item.contains("Sequence")) {
      seen_seq = true;
    } else if (item.contains("SpecialToken")) {
      const std::string id = str_or(item.at("SpecialToken"), "id", "");
      if (!seen_seq) {
        bos = id, add_bos = true;
      } else {
        eos = id, add_eos = true;
      }
    }
  }
}

std::string token_content(const json& j) {
  if (j.is_string()) return j.get<std::string>();
  if (j.is_object()) return str_or(j, "content", "");
  return "";
}

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::from_hf_dir(const std::string& dir) {
  namespace fs = std::filesystem;
  const std::string path = (fs::path(dir) / "tokenizer.json").string();
  std::error_code ec;
  PRIMAL_CHECK(fs::exists(path, ec), "{}: no tokenizer.json in this folder", dir);
  const json j = read_json(path);
  try {
    const json& model = member(j, "model", path, "the file");
    const std::string type = str_or(model, "type", "");
    PRIMAL_CHECK(type == "BPE", "{}: tokenizer model '{}' is not supported (byte-level BPE only)", path, type);
    PRIMAL_CHECK(!model.value("byte_fallback", false), "{}: BPE with byte_fallback (SentencePiece-style) is not supported", path);
    PRIMAL_CHECK(str_or(model, "continuing_subword_prefix", "").empty() && str_or(model, "end_of_word_suffix", "").empty(),
                 "{}: BPE with a subword prefix/suffix is not supported", path);
    if (j.contains("normalizer") && !j.at("normalizer").is_null()) {
      const std::string nt = str_or(j.at("normalizer"), "type", "");
      PRIMAL_CHECK(nt == "NFC", "{}: normalizer '{}' is not supported", path, nt);
    }

    // ids -> texts: the vocab, then added tokens (which may extend it or restate entries)
    std::vector<std::string> texts;
    std::vector<uint32_t> attrs;
    auto put = [&](int64_t id, const std::string& t, uint32_t a) {
      PRIMAL_CHECK(id >= 0 && id < (int64_t(1) << 31), "{}: token id {} out of range", path, id);
      if (size_t(id) >= texts.size()) {
        texts.resize(id + 1);
        attrs.resize(id + 1, tok_attr::kUndefined);
      }
      texts[id] = t;
      attrs[id] = a;
    };
    for (const auto& [t, id] : member(model, "vocab", path, "model").items()) put(id.get<int64_t>(), t, tok_attr::kNormal);
    if (j.contains("added_tokens")) {
      for (const json& at : j.at("added_tokens")) {
        uint32_t a = at.value("special", false) ? tok_attr::kControl : tok_attr::kUserDefined;
        if (at.value("lstrip", false)) a |= tok_attr::kLstrip;
        if (at.value("rstrip", false)) a |= tok_attr::kRstrip;
        put(at.at("id").get<int64_t>(), at.at("content").get<std::string>(), a);
      }
    }
    auto tok = std::make_unique<VocabTokenizer>(VocabKind::BPE);
    Vocab& v = tok->vocab();
    for (size_t id = 0; id < texts.size(); ++id) {
      if (attrs[id] == tok_attr::kUndefined) {  // a hole in the ids: llama.cpp's converter pads
        v.add("[PAD" + std::to_string(id) + "]", 0.0f, tok_attr::kUnused, path);
      } else {
        v.add(texts[id], 0.0f, attrs[id], path);
      }
    }

    PreTokSpec pre;
    read_pre_tokenizer(j.value("pre_tokenizer", json()), path, pre);
    const bool byte_level_decoder = j.contains("decoder") && str_or(j.at("decoder"), "type", "") == "ByteLevel";
    PRIMAL_CHECK(pre.byte_level || byte_level_decoder,
                 "{}: only byte-level BPE is supported (no ByteLevel pre_tokenizer or decoder)", path);
    BpeModel& bpe = tok->init_bpe(pre.patterns, path, "tokenizer.json");
    bpe.ignore_merges = model.value("ignore_merges", false);
    int32_t rank = 0;
    for (const json& m : member(model, "merges", path, "model")) {
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        const size_t sp = s.find(' ', 1);
        PRIMAL_CHECK(sp != std::string::npos, "{}: merge {} '{}' is not 'left right'", path, rank, s);
        bpe.add_merge(std::string_view(s).substr(0, sp), std::string_view(s).substr(sp + 1), rank);
      } else {
        PRIMAL_CHECK(m.is_array() && m.size() == 2, "{}: merge {} is neither 'a b' nor [a, b]", path, rank);
        bpe.add_merge(m[0].get<std::string>(), m[1].get<std::string>(), rank);
      }
      ++rank;
    }

    // BOS/EOS: tokenizer_config.json says; else the post-processor's template.
    std::string bos, eos;
    bool add_bos = false, add_eos = false;
    read_template(j.value("post_processor", json()), bos, eos, add_bos, add_eos);
    const std::string cfg_path = (fs::path(dir) / "tokenizer_config.json").string();
    if (fs::exists(cfg_path, ec)) {
      const json cfg = read_json(cfg_path);
      if (cfg.contains("bos_token")) bos = token_content(cfg.at("bos_token"));
      if (cfg.contains("eos_token")) eos = token_content(cfg.at("eos_token"));
      if (cfg.contains("add_bos_token") && cfg.at("add_bos_token").is_boolean()) add_bos = cfg.at("add_bos_token").get<bool>();
      if (cfg.contains("add_eos_token") && cfg.at("add_eos_token").is_boolean()) add_eos = cfg.at("add_eos_token").get<bool>();
    }
    v.bos = bos.empty() ? -1 : v.find(bos);
    v.eos = eos.empty() ? -1 : v.find(eos);
    v.add_bos = add_bos;
    v.add_eos = add_eos;
    tok->finish(fs::path(dir).filename().string(), path, path);
    return tok;
  } catch (const json::exception& e) {
    fail("{}: unexpected structure: {}", path, e.what());
  }
}

}  // namespace primal
