#include "io/hf_config.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"

namespace primal {
namespace {

using json = nlohmann::json;

// Typed field access that names the file and the key in every error.
class Fields {
 public:
  Fields(const json& j, const std::string& src) : j_(j), src_(src) {}

  bool has(const char* key) const { return j_.contains(key) && !j_[key].is_null(); }
  const json& at(const char* key) const { return j_[key]; }

  int64_t integer(const char* key) const {
    if (!has(key)) fail("{}: missing '{}'", src_, key);
    return as_int(j_[key], key);
  }
  int64_t integer(const char* key, int64_t def) const { return has(key) ? integer(key) : def; }
  double number(const char* key, double def) const {
    if (!has(key)) return def;
    if (!j_[key].is_number()) fail("{}: '{}' must be a number, found {}", src_, key, j_[key].dump());
    return j_[key].get<double>();
  }
  bool boolean(const char* key, bool def) const {
    if (!has(key)) return def;
    if (!j_[key].is_boolean()) fail("{}: '{}' must be true or false, found {}", src_, key, j_[key].dump());
    return j_[key].get<bool>();
  }
  std::string string(const char* key, const std::string& def) const {
    if (!has(key)) return def;
    if (!j_[key].is_string()) fail("{}: '{}' must be a string, found {}", src_, key, j_[key].dump());
    return j_[key].get<std::string>();
  }
  // A token id given as an int or a list of ints (eos_token_id of Llama 3 instruct models).
  std::vector<int32_t> ids(const char* key) const {
    std::vector<int32_t> out;
    if (!has(key)) return out;
    const json& v = j_[key];
    if (v.is_array()) {
      for (const json& e : v) out.push_back(int32_t(as_int(e, key)));
    } else {
      out.push_back(int32_t(as_int(v, key)));
    }
    for (int32_t id : out)
      if (id < 0) fail("{}: '{}' has a negative token id {}", src_, key, id);
    return out;
  }

 private:
  int64_t as_int(const json& v, const char* key) const {
    if (!v.is_number_integer()) fail("{}: '{}' must be an integer, found {}", src_, key, v.dump());
    if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT32_MAX))
      fail("{}: '{}' = {} is absurdly large", src_, key, v.dump());
    return v.get<int64_t>();
  }

  const json& j_;
  const std::string& src_;
};

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open", path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// rope_scaling (transformers 4) or rope_parameters (transformers 5): type, factor and the extra
// fields of llama3 / yarn.
void parse_rope(const json& j, const std::string& src, HfConfig& c) {
  const json* rs = nullptr;
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) rs = &j["rope_scaling"];
  else if (j.contains("rope_parameters") && !j["rope_parameters"].is_null()) rs = &j["rope_parameters"];
  HParams& h = c.hp;
  h.rope_orig_ctx = h.n_ctx_train;  // as hparams_from_gguf: the trained context unless scaled

  const Fields top(j, src);
  if (top.has("rope_theta")) {
    h.rope_theta = float(top.number("rope_theta", 10000.0));
    c.has_rope_theta = true;
  }
  if (!rs) return;
  if (!rs->is_object()) fail("{}: rope scaling parameters must be an object, found {}", src, rs->dump());
  const std::string where = src + " (rope parameters)";
  const Fields f(*rs, where);
  if (!c.has_rope_theta && f.has("rope_theta")) {
    h.rope_theta = float(f.number("rope_theta", 10000.0));
    c.has_rope_theta = true;
  }
  c.rope_type = f.string("rope_type", f.string("type", "default"));
  auto need = [&](const char* key) {
    if (!f.has(key)) fail("{}: rope scaling '{}' needs '{}'", src, c.rope_type, key);
    return f.number(key, 0);
  };
  if (c.rope_type == "default") {
    h.rope_scaling = RopeScaling::None;
  } else if (c.rope_type == "linear") {
    h.rope_scaling = RopeScaling::Linear;
    h.rope_factor = float(need("factor"));
  } else if (c.rope_type == "llama3") {
    h.rope_scaling = RopeScaling::Llama3;
    h.rope_factor = float(need("factor"));
    h.rope_low_freq_factor = float(need("low_freq_factor"));
    h.rope_high_freq_factor = float(need("high_freq_factor"));
    h.rope_orig_ctx = int64_t(need("original_max_position_embeddings"));
    if (!(h.rope_high_freq_factor > h.rope_low_freq_factor))
      fail("{}: llama3 rope scaling needs high_freq_factor > low_freq_factor (got {} and {})", src,
           h.rope_high_freq_factor, h.rope_low_freq_factor);
  } else if (c.rope_type == "yarn") {
    h.rope_scaling = RopeScaling::Yarn;
    h.rope_factor = float(need("factor"));
    h.rope_orig_ctx = f.integer("original_max_position_embeddings", h.n_ctx_train);
  } else {
    fail("{}: rope scaling '{}' is not supported (linear, llama3, yarn)", src, c.rope_type);
  }
  if (!(h.rope_factor > 0)) fail("{}: rope scaling factor {} must be positive", src, h.rope_factor);
  if ((h.rope_scaling == RopeScaling::Llama3 || h.rope_scaling == RopeScaling::Yarn) && h.rope_orig_ctx <= 0)
    fail("{}: original_max_position_embeddings {} must be positive", src, h.rope_orig_ctx);
}

}  // namespace

namespace {

HfConfig parse_config(const std::string& text, const std::string& src) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail("{}: invalid JSON: {}", src, e.what());
  }
  if (!j.is_object()) fail("{}: config is not a JSON object", src);
  const Fields f(j, src);
  HfConfig c;
  HParams& h = c.hp;

  if (f.has("architectures")) {
    const json& a = f.at("architectures");
    if (!a.is_array() || (a.size() > 0 && !a[0].is_string()))
      fail("{}: 'architectures' must be a list of names", src);
    if (!a.empty()) c.architecture = a[0].get<std::string>();
  }
  c.model_type = f.string("model_type", "");
  if (c.model_type.empty()) {
    // Old configs name only the class.
    if (c.architecture == "LlamaForCausalLM") c.model_type = "llama";
    else if (c.architecture == "MistralForCausalLM") c.model_type = "mistral";
    else if (c.architecture == "Qwen2ForCausalLM") c.model_type = "qwen2";
  }
  if (c.model_type == "llama" || c.model_type == "mistral") h.arch = "llama";
  else if (c.model_type == "qwen2") h.arch = "qwen2";
  else
    fail("{}: model_type '{}' (architecture '{}') is not supported (llama, mistral, qwen2)", src, c.model_type,
         c.architecture);

  const std::string act = f.string("hidden_act", "silu");
  if (act != "silu") fail("{}: hidden_act '{}' is not supported (the Llama family uses silu)", src, act);
  if (f.boolean("mlp_bias", false)) fail("{}: mlp_bias = true is not supported", src);
  if (h.arch == "llama" && f.boolean("attention_bias", false))
    fail("{}: attention_bias = true (biases on q/k/v/o projections) is not supported for model_type '{}'", src,
         c.model_type);
  if (f.has("partial_rotary_factor") && f.number("partial_rotary_factor", 1.0) != 1.0)
    fail("{}: partial_rotary_factor {} is not supported", src, f.number("partial_rotary_factor", 1.0));

  h.n_vocab = f.integer("vocab_size");
  h.n_embd = f.integer("hidden_size");
  h.n_layer = f.integer("num_hidden_layers");
  h.n_head = f.integer("num_attention_heads");
  h.n_head_kv = f.integer("num_key_value_heads", h.n_head);
  h.n_ff = f.integer("intermediate_size");
  h.n_ctx_train = f.integer("max_position_embeddings", 2048);
  c.has_head_dim = f.has("head_dim");
  if (c.has_head_dim) {
    h.head_dim = f.integer("head_dim");
  } else {
    if (h.n_head <= 0 || h.n_embd % h.n_head != 0)
      fail("{}: hidden_size {} is not a multiple of num_attention_heads {} (and no head_dim is given)", src,
           h.n_embd, h.n_head);
    h.head_dim = h.n_embd / h.n_head;
  }
  h.rope_dim = h.head_dim;
  h.rms_eps = float(f.number("rms_norm_eps", 1e-6));
  h.rope_neox = true;  // HF layout: rotate halves (i, i + d/2); see hparams.h
  parse_rope(j, src, c);
  h.tied_embeddings = f.boolean("tie_word_embeddings", false);
  h.qkv_bias = h.arch == "qwen2";

  c.bos_ids = f.ids("bos_token_id");
  c.eos_ids = f.ids("eos_token_id");
  if (!c.bos_ids.empty()) h.bos_id = c.bos_ids[0];
  if (!c.eos_ids.empty()) h.eos_id = c.eos_ids[0];
  const std::vector<int32_t> pad = f.ids("pad_token_id");
  if (!pad.empty()) c.pad_id = pad[0];
  for (int32_t id : c.bos_ids)
    if (id >= h.n_vocab) fail("{}: bos_token_id {} is outside the vocabulary ({})", src, id, h.n_vocab);
  for (int32_t id : c.eos_ids)
    if (id >= h.n_vocab) fail("{}: eos_token_id {} is outside the vocabulary ({})", src, id, h.n_vocab);

  h.validate(src);
  return c;
}

}  // namespace

HfConfig parse_hf_config(const std::string& text, const std::string& src) {
  try {
    return parse_config(text, src);
  } catch (const json::exception& e) {
    fail("{}: unexpected content: {}", src, e.what());
  }
}

HfConfig read_hf_config(const std::string& path) {
  namespace fs = std::filesystem;
  const std::string file = fs::is_directory(path) ? (fs::path(path) / "config.json").string() : path;
  if (!fs::exists(file)) fail("{}: no config.json (not a Hugging Face checkpoint folder?)", path);
  return parse_hf_config(slurp(file), file);
}

}  // namespace primal
