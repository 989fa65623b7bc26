#include "infer/loaded_model.h"

#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/gguf.h"

namespace primal {
namespace {

std::string hf_chat_template(const std::string& dir) {
  namespace fs = std::filesystem;
  const fs::path jinja = fs::path(dir) / "chat_template.jinja";
  if (fs::exists(jinja)) {
    std::ifstream f(jinja, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
  }
  const fs::path cfg = fs::path(dir) / "tokenizer_config.json";
  if (!fs::exists(cfg)) return "";
  std::ifstream f(cfg);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(f);
  } catch (const std::exception& e) {
    fail("{}: invalid JSON: {}", cfg.string(), e.what());
  }
  if (!j.is_object() || !j.contains("chat_template")) return "";
  const auto& t = j["chat_template"];
  if (t.is_string()) return t.get<std::string>();
  // A list of named templates: take "default" (as transformers does).
  if (t.is_array())
    for (const auto& e : t)
      if (e.is_object() && e.value("name", "") == "default" && e.contains("template") && e["template"].is_string())
        return e["template"].get<std::string>();
  return "";
}

bool has_special_token(const Tokenizer& tok, const char* text) {
  const auto ids = tok.encode(text, false, true);
  return ids.size() == 1 && tok.is_special(ids[0]);
}

}  // namespace

LoadedModel LoadedModel::open(const std::string& path) {
  LoadedModel m;
  m.model = Model::open(path);
  const ModelSource& src = *m.model->source;
  if (const GgufFile* g = src.gguf()) {
    m.tokenizer = Tokenizer::from_gguf(*g);
    m.chat_template = g->get_str("tokenizer.chat_template", "");
  } else {
    m.tokenizer = Tokenizer::from_hf_dir(path);
    m.chat_template = hf_chat_template(path);
  }
  // Some checkpoints pad the embedding past the vocabulary; the reverse cannot work.
  if (m.tokenizer->n_vocab() > m.model->hparams().n_vocab)
    fail("{}: the tokenizer has {} tokens but the model only {} embeddings", path, m.tokenizer->n_vocab(),
         m.model->hparams().n_vocab);
  return m;
}

ChatFormat LoadedModel::chat_format() const {
  const bool llama3 = has_special_token(*tokenizer, "<|start_header_id|>");
  // Llama 1/2 and Mistral's SentencePiece vocabularies (BOS "<s>") go with the [INST] format.
  const int32_t bos = tokenizer->bos_id();
  const bool llama2 = bos >= 0 && bos < tokenizer->n_vocab() && tokenizer->token_text(bos) == "<s>";
  return detect_chat_format(chat_template, model->hparams().arch, llama3, llama2);
}

std::string LoadedModel::describe() const {
  const HParams& hp = model->hparams();
  int64_t n_params = 0;
  std::map<std::string, int64_t> types;  // type name -> elements
  for (const auto& t : model->source->tensors()) {
    n_params += t.nelements();
    types[dtype_name(t.type)] += t.nelements();
  }
  std::string ts;
  for (const auto& [name, n] : types)
    ts += fmt::format("{}{} {:.0f}%", ts.empty() ? "" : ", ", name, 100.0 * double(n) / double(n_params));
  return fmt::format("{}, {} layers, {} embd, {}/{} heads, vocab {}, {:.1f}M parameters ({})", hp.arch, hp.n_layer,
                     hp.n_embd, hp.n_head, hp.n_head_kv, hp.n_vocab, double(n_params) / 1e6, ts);
}

}  // namespace primal
