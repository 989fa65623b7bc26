#include "io/convert.h"

#include <cctype>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <memory>
#include <numbers>

#include "core/error.h"
#include "io/gguf_writer.h"
#include "io/hf_config.h"
#include "io/hf_vocab.h"
#include "io/model_source.h"
#include "quant/dequant.h"

namespace primal {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string shape_str(const std::vector<int64_t>& ne) {
  std::string s = "{";
  for (size_t k = 0; k < ne.size(); ++k) s += (k ? ", " : "") + std::to_string(ne[k]);
  return s + "}";
}

// Python's str.title() for one ASCII word: upper after a non-letter, lower after a letter.
std::string title(const std::string& w) {
  std::string out = w;
  bool prev_alpha = false;
  for (char& c : out) {
    const bool a = std::isalpha(static_cast<unsigned char>(c));
    if (a) c = char(prev_alpha ? std::tolower(static_cast<unsigned char>(c)) : std::toupper(static_cast<unsigned char>(c)));
    prev_alpha = a;
  }
  return out;
}

bool all_lower(const std::string& w) {  // Python's str.islower(): has a cased letter, none upper
  bool cased = false;
  for (unsigned char c : w) {
    if (std::isupper(c)) return false;
    if (std::islower(c)) cased = true;
  }
  return cased;
}

// A word gguf-py keeps as is: a version ("v1.5") or anything starting with a digit ("7b").
bool version_like(const std::string& w) {
  if (w.empty()) return false;
  if (std::isdigit(static_cast<unsigned char>(w[0]))) return true;
  if (w[0] != 'v' || w.size() < 2) return false;
  bool digit = false;
  for (size_t k = 1; k < w.size(); ++k) {
    const char c = w[k];
    if (std::isdigit(static_cast<unsigned char>(c))) digit = true;
    else if (c == '.' && digit && k + 1 < w.size() && std::isdigit(static_cast<unsigned char>(w[k + 1]))) continue;
    else return false;
  }
  return digit;
}

// Tensors in model order: embedding, each block's weights, final norm, head.
std::vector<std::string> tensor_order(const ModelSource& m) {
  std::vector<std::string> names = {"token_embd.weight"};
  static const char* kBlock[] = {"attn_norm.weight", "attn_q.weight",   "attn_q.bias",     "attn_k.weight",
                                 "attn_k.bias",      "attn_v.weight",   "attn_v.bias",     "attn_output.weight",
                                 "ffn_norm.weight",  "ffn_gate.weight", "ffn_up.weight",   "ffn_down.weight"};
  for (int64_t l = 0; l < m.hparams().n_layer; ++l)
    for (const char* s : kBlock) names.push_back("blk." + std::to_string(l) + "." + s);
  names.push_back("output_norm.weight");
  names.push_back("output.weight");
  std::vector<std::string> present;
  for (const auto& n : names)
    if (m.find(n)) present.push_back(n);
  if (present.size() != m.tensors().size())
    fail("{}: internal error: {} tensors mapped but {} ordered", m.path(), m.tensors().size(), present.size());
  return present;
}

}  // namespace

uint32_t llama_file_type(DType t) {
  switch (t) {
    case DType::F32: return 0;
    case DType::F16: return 1;
    case DType::Q8_0: return 7;
    case DType::BF16: return 32;
    default: fail("convert: output type {} is not supported (f32, f16, bf16, q8_0)", dtype_name(t));
  }
}

int64_t llama_qk_source_row(int64_t r, int64_t n_head, int64_t n_rows) {
  const int64_t d = n_rows / n_head;  // rows per head
  const int64_t h = r / d, k = r % d;
  return h * d + (k % 2) * (d / 2) + k / 2;
}

std::string model_name_from_dir(const std::string& dir) {
  std::string base = std::filesystem::path(dir).lexically_normal().filename().string();
  if (base.empty()) base = std::filesystem::path(dir).lexically_normal().parent_path().filename().string();
  std::string out, word;
  auto flush = [&] {
    if (word.empty()) return;
    if (!out.empty()) out += ' ';
    out += all_lower(word) && !version_like(word) ? title(word) : word;
    word.clear();
  };
  for (char c : base) {
    if (c == '-' || std::isspace(static_cast<unsigned char>(c))) flush();
    else word += c;
  }
  flush();
  return out;
}

std::string size_label(int64_t n) {
  double scaled;
  const char* suffix;
  if (n >= 1e12) scaled = double(n) * 1e-12, suffix = "T";
  else if (n >= 1e9) scaled = double(n) * 1e-9, suffix = "B";
  else if (n >= 1e6) scaled = double(n) * 1e-6, suffix = "M";
  else scaled = double(n) * 1e-3, suffix = "K";
  // Two significant digits at least: 31.6M -> "32M", 1.24B -> "1.2B".
  std::string whole = fmt::format("{}", std::llround(scaled));  // Python round (ties differ; harmless)
  const size_t lead = whole.find_first_not_of('0');
  const int digits = lead == std::string::npos ? 0 : int(whole.size() - lead);
  const int fix = std::max(2 - digits, 0);
  return fmt::format("{:.{}f}{}", scaled, fix, suffix);
}

std::vector<float> llama3_rope_factors(const HParams& hp) {
  PRIMAL_CHECK(hp.rope_scaling == RopeScaling::Llama3, "llama3_rope_factors: the model has no llama3 rope scaling");
  const int64_t dim = hp.rope_dim;
  const float old_ctx = float(hp.rope_orig_ctx);
  const float low_wavelen = old_ctx / hp.rope_low_freq_factor;
  const float high_wavelen = old_ctx / hp.rope_high_freq_factor;
  std::vector<float> f;
  for (int64_t k = 0; k < dim; k += 2) {
    const float freq = 1.0f / std::pow(hp.rope_theta, float(k) / float(dim));
    const float wavelen = float(2.0 * std::numbers::pi) / freq;
    if (wavelen < high_wavelen) {
      f.push_back(1.0f);
    } else if (wavelen > low_wavelen) {
      f.push_back(hp.rope_factor);
    } else {
      const float smooth =
          (old_ctx / wavelen - hp.rope_low_freq_factor) / (hp.rope_high_freq_factor - hp.rope_low_freq_factor);
      f.push_back(1.0f / ((1.0f - smooth) / hp.rope_factor + smooth));
    }
  }
  return f;
}

void convert_hf_to_gguf(const std::string& dir, const std::string& out, const ConvertOptions& o) {
  auto log = [&](const std::string& s) {
    if (o.log) o.log(s);
  };
  const uint32_t file_type = llama_file_type(o.type);
  // Everything is read and validated before the output file is created.
  const HfConfig cfg = read_hf_config(dir);
  const std::unique_ptr<ModelSource> m = open_hf_model(dir);
  const HParams& hp = cfg.hp;
  const auto tok_kv = hf_tokenizer_metadata(dir, cfg, o.pre);
  const std::string a = hp.arch + ".";
  log(fmt::format("{}: {} ({}), {} layers, {} heads ({} kv), embd {}, ffn {}, vocab {}", dir, hp.arch,
                  cfg.model_type, hp.n_layer, hp.n_head, hp.n_head_kv, hp.n_embd, hp.n_ff, hp.n_vocab));

  struct Planned {
    const TensorRef* src;
    DType type;
    bool permute;
    int64_t heads;
  };
  std::vector<Planned> plan;
  int64_t n_params = 0;
  for (const std::string& name : tensor_order(*m)) {
    const TensorRef& t = m->tensor(name);
    Planned p{&t, o.type, false, 0};
    // llama.cpp keeps 1-D tensors, norms and biases in F32 (its kernels expect them so).
    if (t.ne.size() <= 1 || ends_with(name, "_norm.weight") || !ends_with(name, ".weight")) p.type = DType::F32;
    if (p.type == DType::Q8_0 && t.ne[0] % 32 != 0) {
      log(fmt::format("{}: rows of {} are not whole Q8_0 blocks, writing F16", name, t.ne[0]));
      p.type = DType::F16;
    }
    if (hp.arch == "llama" && (ends_with(name, "attn_q.weight") || ends_with(name, "attn_k.weight"))) {
      p.permute = true;
      p.heads = ends_with(name, "attn_q.weight") ? hp.n_head : hp.n_head_kv;
      if (t.nrows() % (2 * p.heads) != 0)
        fail("{}: tensor '{}' has {} rows, not {} heads of an even size", dir, name, t.nrows(), p.heads);
    }
    n_params += t.nelements();
    plan.push_back(p);
  }

  GgufWriter w;
  w.add_kv("general.architecture", GgufValue::string(hp.arch));
  w.add_kv("general.type", GgufValue::string("model"));
  w.add_kv("general.name", GgufValue::string(o.name.empty() ? model_name_from_dir(dir) : o.name));
  w.add_kv("general.size_label", GgufValue::string(size_label(n_params)));
  w.add_kv(a + "block_count", GgufValue::u32(uint32_t(hp.n_layer)));
  w.add_kv(a + "context_length", GgufValue::u32(uint32_t(hp.n_ctx_train)));
  w.add_kv(a + "embedding_length", GgufValue::u32(uint32_t(hp.n_embd)));
  w.add_kv(a + "feed_forward_length", GgufValue::u32(uint32_t(hp.n_ff)));
  w.add_kv(a + "attention.head_count", GgufValue::u32(uint32_t(hp.n_head)));
  w.add_kv(a + "attention.head_count_kv", GgufValue::u32(uint32_t(hp.n_head_kv)));
  if (cfg.has_rope_theta) w.add_kv(a + "rope.freq_base", GgufValue::f32(hp.rope_theta));
  w.add_kv(a + "attention.layer_norm_rms_epsilon", GgufValue::f32(hp.rms_eps));
  if (cfg.has_head_dim) {
    w.add_kv(a + "attention.key_length", GgufValue::u32(uint32_t(hp.head_dim)));
    w.add_kv(a + "attention.value_length", GgufValue::u32(uint32_t(hp.head_dim)));
  }
  w.add_kv("general.file_type", GgufValue::u32(file_type));
  w.add_kv(a + "vocab_size", GgufValue::u32(uint32_t(hp.n_vocab)));
  w.add_kv(a + "rope.dimension_count", GgufValue::u32(uint32_t(hp.rope_dim)));
  if (hp.rope_scaling == RopeScaling::Linear) {
    w.add_kv(a + "rope.scaling.type", GgufValue::string("linear"));
    w.add_kv(a + "rope.scaling.factor", GgufValue::f32(hp.rope_factor));
  } else if (hp.rope_scaling == RopeScaling::Yarn) {
    w.add_kv(a + "rope.scaling.type", GgufValue::string("yarn"));
    w.add_kv(a + "rope.scaling.factor", GgufValue::f32(hp.rope_factor));
    w.add_kv(a + "rope.scaling.original_context_length", GgufValue::u32(uint32_t(hp.rope_orig_ctx)));
  }
  for (const auto& [k, v] : tok_kv) w.add_kv(k, v);
  w.add_kv("general.quantization_version", GgufValue::u32(2));

  // llama3 rope scaling lives in a tensor of per-frequency factors, written first as llama.cpp does.
  if (hp.rope_scaling == RopeScaling::Llama3) {
    auto factors = std::make_shared<std::vector<float>>(llama3_rope_factors(hp));
    w.add_tensor("rope_freqs.weight", DType::F32, {int64_t(factors->size())},
                 [factors](uint8_t* dst, size_t n) { std::memcpy(dst, factors->data(), n); });
  }
  for (const Planned& p : plan) {
    const TensorRef* t = p.src;
    w.add_tensor(t->name, p.type, t->ne, [p, t](uint8_t* dst, size_t nbytes) {
      const int64_t cols = t->row_size(), rows = t->nrows();
      const size_t out_row = row_bytes(p.type, cols);
      std::vector<float> buf(static_cast<size_t>(cols));
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t src = p.permute ? llama_qk_source_row(r, p.heads, rows) : r;
        dequantize_tensor_row(*t, src, buf.data());
        quantize_row(p.type, buf.data(), dst + size_t(r) * out_row, cols);
      }
      PRIMAL_CHECK(size_t(rows) * out_row == nbytes, "{}: internal size mismatch", t->name);
    });
  }
  log(fmt::format("writing {} ({} tensors, {} metadata keys, weights {})", out, w.tensor_count(), w.kv().size(),
                  dtype_name(o.type)));
  size_t k = 0;
  const bool has_freqs = hp.rope_scaling == RopeScaling::Llama3;
  w.write(out, [&](size_t i, size_t count, const std::string& name) {
    std::string type = "F32", shape;
    if (!(has_freqs && i == 0)) {
      const Planned& p = plan[i - (has_freqs ? 1 : 0)];
      type = dtype_name(p.type);
      shape = shape_str(p.src->ne);
    }
    log(fmt::format("[{:>4}/{}] {:<28} {:<5} {}", ++k, count, name, type, shape));
  });
}

}  // namespace primal
