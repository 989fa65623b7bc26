#include "io/hf_vocab.h"

#include <cctype>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "io/hf_config.h"

namespace primal {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

// llama.cpp's token types (llama_token_type / gguf.TokenType).
enum TokenType : int32_t { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

// The pre-tokenizer regexes as tokenizer.json spells them.
constexpr const char* kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

json read_json(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) fail("{}: cannot open", p.string());
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return json::parse(ss.str());
  } catch (const json::exception& e) {
    fail("{}: invalid JSON: {}", p.string(), e.what());
  }
}

std::string pre_from_json(const json& pt) {
  if (!pt.is_object()) return "";
  const std::string type = pt.value("type", "");
  if (type == "ByteLevel") {
    // GPT-2: the ByteLevel pre-tokenizer splits with its own (GPT-2) regex, no prefix space.
    if (pt.value("use_regex", true) && !pt.value("add_prefix_space", false)) return "gpt-2";
    return "";
  }
  if (type != "Sequence" || !pt.contains("pretokenizers") || !pt["pretokenizers"].is_array()) return "";
  const json& seq = pt["pretokenizers"];
  if (seq.size() != 2 || !seq[0].is_object() || !seq[1].is_object()) return "";
  const json& split = seq[0];
  const json& bl = seq[1];
  if (split.value("type", "") != "Split" || bl.value("type", "") != "ByteLevel") return "";
  if (bl.value("use_regex", true) || bl.value("add_prefix_space", false)) return "";
  if (split.value("behavior", "") != "Isolated" || split.value("invert", false)) return "";
  if (!split.contains("pattern") || !split["pattern"].is_object() || !split["pattern"].contains("Regex") ||
      !split["pattern"]["Regex"].is_string())
    return "";
  const std::string re = split["pattern"]["Regex"].get<std::string>();
  if (re == kLlama3Regex) return "llama-bpe";
  if (re == kQwen2Regex) return "qwen2";
  return "";
}

// llama.cpp marks some added tokens that are not flagged special as control tokens anyway.
bool looks_special(const std::string& t) {
  auto starts = [&](const char* p) { return t.rfind(p, 0) == 0; };
  auto ends = [&](const char* s) {
    const size_t n = std::strlen(s);
    return t.size() >= n && t.compare(t.size() - n, n, s) == 0;
  };
  if (t == "<pad>" || t == "<mask>" || t == "<2mass>" || t == "[@BOS@]") return true;
  if (starts("<|") && ends("|>")) return true;
  if (starts("<\xef\xbd\x9c") && ends("\xef\xbd\x9c>")) return true;  // deepseek's fullwidth bars
  return starts("<unused") && ends(">");
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t p = s.find(from); p != std::string::npos; p = s.find(from, p + to.size())) s.replace(p, from.size(), to);
  return s;
}

// A special-token entry of tokenizer_config.json: a string or {"content": ...}.
std::string token_content(const json& tc, const std::string& key) {
  if (!tc.is_object() || !tc.contains(key)) return "";
  const json& e = tc[key];
  if (e.is_string()) return e.get<std::string>();
  if (e.is_object() && e.contains("content") && e["content"].is_string()) return e["content"].get<std::string>();
  return "";
}

// Insertion-ordered map, as the Python dicts of gguf-py's SpecialVocab.
template <class V>
struct Ordered {
  std::vector<std::pair<std::string, V>> items;
  bool has(const std::string& k) const {
    for (const auto& [key, _] : items)
      if (key == k) return true;
    return false;
  }
  void set(const std::string& k, V v) {
    for (auto& [key, val] : items)
      if (key == k) {
        val = v;
        return;
      }
    items.emplace_back(k, v);
  }
};

}  // namespace

std::string detect_bpe_pre(const std::string& text) {
  try {
    return pre_from_json(json::parse(text));
  } catch (const json::exception&) {
    return "";
  }
}

namespace {

std::vector<std::pair<std::string, GgufValue>> tokenizer_metadata(const std::string& dir_s, const HfConfig& cfg,
                                                                  const std::string& pre_override) {
  const fs::path dir(dir_s);
  const fs::path tj_path = dir / "tokenizer.json";
  if (!fs::exists(tj_path)) fail("{}: no tokenizer.json (only HF fast tokenizers are supported)", dir_s);
  const std::string tjs = tj_path.string();
  const json tj = read_json(tj_path);
  if (!tj.is_object() || !tj.contains("model") || !tj["model"].is_object()) fail("{}: no 'model' object", tjs);
  const json& model = tj["model"];
  const std::string mtype = model.value("type", "");
  const bool byte_fallback = model.contains("byte_fallback") && model["byte_fallback"].is_boolean() &&
                             model["byte_fallback"].get<bool>();
  const std::string dtype =
      tj.contains("decoder") && tj["decoder"].is_object() ? tj["decoder"].value("type", "") : std::string();
  if (mtype != "BPE" || byte_fallback || dtype != "ByteLevel")
    fail("{}: only byte-level BPE tokenizers are supported (model type '{}', byte_fallback {}, decoder '{}')", tjs,
         mtype, byte_fallback, dtype);

  std::string pre = pre_override;
  if (pre.empty()) {
    pre = pre_from_json(tj.contains("pre_tokenizer") ? tj["pre_tokenizer"] : json());
    if (pre.empty())
      fail("{}: the pre-tokenizer {} is not one primal recognizes (GPT-2 ByteLevel, Llama 3 or Qwen2 Split); "
           "name it with --pre",
           tjs, tj.contains("pre_tokenizer") ? tj["pre_tokenizer"].dump().substr(0, 200) : "null");
  }

  // Vocabulary: base vocab plus added tokens (which may repeat base entries), padded to the
  // model's vocab_size with [PADi] as llama.cpp does.
  if (!model.contains("vocab") || !model["vocab"].is_object()) fail("{}: model.vocab is not an object", tjs);
  const int64_t n_vocab = cfg.hp.n_vocab;
  std::vector<std::string> tokens(static_cast<size_t>(n_vocab));
  std::vector<bool> present(static_cast<size_t>(n_vocab), false);
  for (const auto& [tok, idv] : model["vocab"].items()) {
    if (!idv.is_number_integer()) fail("{}: vocab entry '{}' has a non-integer id", tjs, tok);
    const int64_t id = idv.get<int64_t>();
    if (id < 0 || id >= n_vocab) fail("{}: token '{}' has id {} outside the model's vocab_size {}", tjs, tok, id, n_vocab);
    if (present[size_t(id)]) fail("{}: id {} is given to both '{}' and '{}'", tjs, id, tokens[size_t(id)], tok);
    tokens[size_t(id)] = tok;
    present[size_t(id)] = true;
  }
  std::map<int64_t, bool> added_special;  // id -> "special" flag of an added token
  std::vector<std::pair<std::string, int64_t>> added;  // content, id (for special-token lookup)
  if (tj.contains("added_tokens") && tj["added_tokens"].is_array()) {
    for (const json& a : tj["added_tokens"]) {
      if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() || !a.contains("content") ||
          !a["content"].is_string())
        fail("{}: malformed added_tokens entry {}", tjs, a.dump().substr(0, 200));
      const int64_t id = a["id"].get<int64_t>();
      const std::string content = a["content"].get<std::string>();
      if (id < 0 || id >= n_vocab)
        fail("{}: added token '{}' has id {} outside the model's vocab_size {}", tjs, content, id, n_vocab);
      tokens[size_t(id)] = content;
      present[size_t(id)] = true;
      added_special[id] = a.contains("special") && a["special"].is_boolean() && a["special"].get<bool>();
      added.emplace_back(content, id);
    }
  }
  std::vector<GgufValue> types;
  types.reserve(size_t(n_vocab));
  for (int64_t i = 0; i < n_vocab; ++i) {
    auto& t = tokens[size_t(i)];
    int32_t type = kNormal;
    if (!present[size_t(i)]) {
      t = "[PAD" + std::to_string(i) + "]";
      type = kUnused;
    } else if (auto it = added_special.find(i); it != added_special.end()) {
      if (it->second || looks_special(t)) {
        type = kControl;
      } else {
        t = replace_all(t, "\xe2\x96\x81", " ");  // pre-normalize user-defined SentencePiece spaces
        type = kUserDefined;
      }
    }
    types.push_back(GgufValue::i32(type));
  }

  // Merges: "a b" strings, or [a, b] pairs (tokenizers >= 0.20), whose spaces are written as
  // U+0120 so that the space can still separate the two halves.
  std::vector<std::string> merges;
  if (model.contains("merges") && model["merges"].is_array()) {
    for (const json& m : model["merges"]) {
      if (m.is_string()) {
        merges.push_back(m.get<std::string>());
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        merges.push_back(replace_all(m[0].get<std::string>(), " ", "\xc4\xa0") + " " +
                         replace_all(m[1].get<std::string>(), " ", "\xc4\xa0"));
      } else {
        fail("{}: malformed merge {}", tjs, m.dump().substr(0, 200));
      }
    }
  }
  if (merges.empty()) fail("{}: a BPE tokenizer without merges", tjs);

  // Special tokens and add_bos/add_eos, following gguf-py's SpecialVocab.
  json tc;
  if (fs::exists(dir / "tokenizer_config.json")) tc = read_json(dir / "tokenizer_config.json");
  const bool have_tc = tc.is_object() && !tc.empty();
  std::string sp_bos = token_content(tc, "bos_token"), sp_eos = token_content(tc, "eos_token");
  const std::string sp_cls = token_content(tc, "cls_token"), sp_sep = token_content(tc, "sep_token");
  if (sp_bos.empty() && !sp_cls.empty()) sp_bos = sp_cls;
  if (sp_eos.empty() && !sp_sep.empty()) sp_eos = sp_sep;
  Ordered<bool> add;
  if (tj.contains("post_processor") && tj["post_processor"].is_object()) {
    const json& pp = tj["post_processor"];
    const json procs = pp.contains("processors") && pp["processors"].is_array() ? pp["processors"] : json::array({pp});
    for (const json& p : procs) {
      if (!p.is_object()) continue;
      const std::string type = p.value("type", "");
      if (type == "RobertaProcessing") {
        add.set("bos", true);
        add.set("eos", true);
        add.set("sep", true);
      } else if (type == "TemplateProcessing" && p.contains("single") && p["single"].is_array() &&
                 p["single"].size() > 1) {
        const json& single = p["single"];
        auto special_id = [](const json& e) {
          return e.is_object() && e.contains("SpecialToken") && e["SpecialToken"].is_object()
                     ? e["SpecialToken"].value("id", "")
                     : std::string();
        };
        const std::string first = special_id(single.front()), last = special_id(single.back());
        if (!first.empty()) {
          if (!have_tc) sp_bos = first;
          add.set("bos", first == sp_bos || first == sp_cls);
        }
        if (!last.empty()) {
          if (!have_tc) sp_eos = last;
          add.set("eos", last == sp_eos);
        }
      }
    }
  }
  static const char* kTypes[] = {"bos", "eos", "unk", "sep", "pad", "cls", "mask"};
  Ordered<int64_t> ids;
  auto set_id = [&](const std::string& typ, int64_t id, const std::string& from) {
    if (ids.has(typ)) return;
    if (id < 0 || id >= n_vocab) fail("{}: {} token id {} is outside the vocabulary ({})", from, typ, id, n_vocab);
    ids.set(typ, id);
  };
  if (have_tc) {
    const std::string tcs = (dir / "tokenizer_config.json").string();
    for (const char* typ : kTypes) {
      const std::string k = std::string("add_") + typ + "_token";
      if (tc.contains(k) && tc[k].is_boolean()) add.set(typ, tc[k].get<bool>());
      std::string content = token_content(tc, std::string(typ) + "_token");
      if (std::string(typ) == "bos" && content.empty()) content = sp_bos;
      if (std::string(typ) == "eos" && content.empty()) content = sp_eos;
      if (content.empty()) continue;
      for (const auto& [c, id] : added)
        if (c == content) {
          set_id(typ, id, tcs);
          break;
        }
    }
  }
  if (fs::exists(dir / "config.json")) {
    const json cj = read_json(dir / "config.json");
    for (const char* typ : kTypes) {
      const std::string k = std::string(typ) + "_token_id";
      // Lists (several eos ids) are skipped here, as llama.cpp's converter skips them.
      if (cj.is_object() && cj.contains(k) && cj[k].is_number_integer())
        set_id(typ, cj[k].get<int64_t>(), (dir / "config.json").string());
    }
  }

  std::vector<std::pair<std::string, GgufValue>> kv;
  kv.emplace_back("tokenizer.ggml.model", GgufValue::string("gpt2"));
  kv.emplace_back("tokenizer.ggml.pre", GgufValue::string(pre));
  kv.emplace_back("tokenizer.ggml.tokens", GgufValue::strings(tokens));
  kv.emplace_back("tokenizer.ggml.token_type", GgufValue::array(GgufType::INT32, std::move(types)));
  kv.emplace_back("tokenizer.ggml.merges", GgufValue::strings(merges));
  static const std::map<std::string, std::string> kIdKeys = {
      {"bos", "bos_token_id"},        {"eos", "eos_token_id"},         {"unk", "unknown_token_id"},
      {"sep", "seperator_token_id"},  {"pad", "padding_token_id"},     {"cls", "cls_token_id"},
      {"mask", "mask_token_id"}};  // "seperator" is llama.cpp's spelling
  for (const auto& [typ, id] : ids.items)
    kv.emplace_back("tokenizer.ggml." + kIdKeys.at(typ), GgufValue::u32(uint32_t(id)));
  for (const auto& [typ, v] : add.items)
    if (typ == "bos" || typ == "eos" || typ == "sep")
      kv.emplace_back("tokenizer.ggml.add_" + typ + "_token", GgufValue::boolean(v));

  // Chat template: tokenizer_config.json, else chat_template.jinja / chat_template.json.
  json tmpl;
  if (have_tc && tc.contains("chat_template")) tmpl = tc["chat_template"];
  if (tmpl.is_null() && fs::exists(dir / "chat_template.jinja")) {
    std::ifstream in(dir / "chat_template.jinja", std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    tmpl = ss.str();
  }
  if (tmpl.is_null() && fs::exists(dir / "chat_template.json")) {
    const json ct = read_json(dir / "chat_template.json");
    if (ct.is_object() && ct.contains("chat_template")) tmpl = ct["chat_template"];
  }
  if (tmpl.is_string()) {
    kv.emplace_back("tokenizer.chat_template", GgufValue::string(tmpl.get<std::string>()));
  } else if (tmpl.is_array()) {
    // Named templates: "default" is the chat template, the others tokenizer.chat_template.NAME.
    std::vector<std::string> names;
    for (const json& t : tmpl) {
      if (!t.is_object() || !t.contains("name") || !t.contains("template") || !t["name"].is_string() ||
          !t["template"].is_string())
        continue;
      std::string name = t["name"].get<std::string>();
      for (char& ch : name)
        if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
      if (name == "default") {
        kv.emplace_back("tokenizer.chat_template", GgufValue::string(t["template"].get<std::string>()));
      } else {
        kv.emplace_back("tokenizer.chat_template." + name, GgufValue::string(t["template"].get<std::string>()));
        names.push_back(name);
      }
    }
    if (!names.empty()) kv.emplace_back("tokenizer.chat_templates", GgufValue::strings(names));
  }
  return kv;
}

}  // namespace

std::vector<std::pair<std::string, GgufValue>> hf_tokenizer_metadata(const std::string& dir, const HfConfig& cfg,
                                                                     const std::string& pre) {
  try {
    return tokenizer_metadata(dir, cfg, pre);
  } catch (const json::exception& e) {
    // A field of an unexpected JSON type somewhere the checks above did not look.
    fail("{}: unexpected content in tokenizer.json / tokenizer_config.json: {}", dir, e.what());
  }
}

}  // namespace primal
