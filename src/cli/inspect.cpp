// primal inspect PATH: metadata and tensor table of a GGUF file (like gguf-dump), of a
// .safetensors file, or of an HF checkpoint folder (config summary + tensors of every shard).
#include <fmt/format.h>

#include <filesystem>
#include <map>
#include <memory>

#include "cli/commands.h"
#include "core/error.h"
#include "io/gguf.h"
#include "io/hf_config.h"
#include "io/hf_names.h"
#include "io/safetensors.h"
#include "quant/lut_format.h"

namespace primal::cli {
namespace {

struct InspectOptions {
  std::string path;
  size_t max_items = 8;
  bool no_tensors = false;
};

std::string shape_string(const std::vector<int64_t>& ne) {
  std::string s;
  for (size_t k = 0; k < ne.size(); ++k) s += (k ? " x " : "") + std::to_string(ne[k]);
  return s.empty() ? "scalar" : s;
}

void inspect_gguf(const InspectOptions& o) {
  GgufFile f(o.path);
  fmt::print("{}: GGUF v{}, {} metadata keys, {} tensors, alignment {}, data at offset {}\n", o.path,
             f.version(), f.kv().size(), f.tensors().size(), f.alignment(), f.data_offset());
  fmt::print("\n  {:>4}  {:<8} {}\n", "#", "type", "key = value");
  size_t k = 0;
  for (const auto& [key, v] : f.kv()) {
    const std::string type = v.type == GgufType::ARRAY ? fmt::format("arr[{}]", gguf_type_name(v.elem))
                                                       : gguf_type_name(v.type);
    fmt::print("  {:>4}  {:<8} {} = {}\n", ++k, type, key, v.to_string(o.max_items));
  }
  if (o.no_tensors || f.tensors().empty()) return;
  fmt::print("\n  {:>4}  {:<40} {:<8} {:<24} {:>12} {:>12}\n", "#", "name", "type", "shape (ne0 first)",
             "offset", "bytes");
  size_t total = 0;
  k = 0;
  for (const auto& t : f.tensors()) {
    fmt::print("  {:>4}  {:<40} {:<8} {:<24} {:>12} {:>12}\n", ++k, t.name, dtype_name(t.type),
               shape_string(t.ne), t.offset, t.nbytes);
    total += t.nbytes;
  }
  fmt::print("\n  {} tensors, {:.2f} MiB of tensor data\n", f.tensors().size(), double(total) / (1 << 20));
  // Parameters and bits per weight as llama.cpp reports them (LUT scales and grids are storage,
  // not parameters), and the same over the blocks' linear layers.
  std::map<std::string, int> types;
  for (const auto& t : f.tensors())
    if (!is_lut_companion(t.name)) ++types[dtype_name(t.type)];
  std::string list;
  for (const auto& [name, n] : types) list += fmt::format("{}{} x{}", list.empty() ? "" : ", ", name, n);
  const LutSizeReport r = model_size_report(f);
  fmt::print("  {} parameters ({}), {:.4f} bits per weight; linear layers {:.4f}\n", r.params, list, r.bpw(),
             r.linear_bpw());
}

std::string st_shape(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t k = 0; k < shape.size(); ++k) s += (k ? ", " : "") + std::to_string(shape[k]);
  return s + "]";
}

const char* rope_name(RopeScaling r) {
  switch (r) {
    case RopeScaling::None: return "none";
    case RopeScaling::Linear: return "linear";
    case RopeScaling::Llama3: return "llama3";
    case RopeScaling::Yarn: return "yarn";
  }
  return "?";
}

void inspect_safetensors(const InspectOptions& o) {
  SafetensorsFile f(o.path);
  fmt::print("{}: safetensors, header {} bytes, {} tensors, data at offset {}\n", o.path, f.header_size(),
             f.tensors().size(), f.data_offset());
  for (const auto& [k, v] : f.metadata()) fmt::print("  __metadata__ {} = \"{}\"\n", k, v);
  if (o.no_tensors) return;
  fmt::print("\n  {:>4}  {:<52} {:<6} {:<18} {:>12} {:>12}\n", "#", "name", "dtype", "shape", "offset", "bytes");
  size_t k = 0, total = 0;
  for (const auto& t : f.tensors()) {
    fmt::print("  {:>4}  {:<52} {:<6} {:<18} {:>12} {:>12}\n", ++k, t.name, t.dtype, st_shape(t.shape), t.begin,
               t.nbytes);
    total += t.nbytes;
  }
  fmt::print("\n  {} tensors, {:.2f} MiB of tensor data (offsets from the start of the data)\n", f.tensors().size(),
             double(total) / (1 << 20));
}

void inspect_hf(const InspectOptions& o) {
  const HfConfig c = read_hf_config(o.path);
  const HParams& h = c.hp;
  SafetensorsModel m(o.path);
  fmt::print("{}: Hugging Face checkpoint, model_type {} ({}), {} safetensors file(s), {} tensors\n", o.path,
             c.model_type, c.architecture.empty() ? "?" : c.architecture, m.files().size(), m.tensors().size());
  fmt::print("  arch {}: vocab {}, context {}, embd {}, layers {}, heads {} (kv {}), head_dim {}, ffn {}\n", h.arch,
             h.n_vocab, h.n_ctx_train, h.n_embd, h.n_layer, h.n_head, h.n_head_kv, h.head_dim, h.n_ff);
  fmt::print("  rms_eps {}, rope theta {}, rope scaling {}", h.rms_eps, h.rope_theta, rope_name(h.rope_scaling));
  if (h.rope_scaling != RopeScaling::None) fmt::print(" (factor {}, original context {})", h.rope_factor, h.rope_orig_ctx);
  fmt::print("\n  tied head {}, qkv bias {}, bos {}, eos {}\n", h.tied_embeddings ? "yes" : "no",
             h.qkv_bias ? "yes" : "no", h.bos_id, h.eos_id);
  if (o.no_tensors) return;
  fmt::print("\n  {:>4}  {:<48} {:<24} {:<6} {:<14} {:<34} {:>10}\n", "#", "name", "llama.cpp name", "dtype", "shape",
             "file", "offset");
  size_t k = 0, total = 0;
  for (const SafetensorsTensor* t : m.tensors()) {
    const auto g = gguf_name_for_hf(t->name);
    fmt::print("  {:>4}  {:<48} {:<24} {:<6} {:<14} {:<34} {:>10}\n", ++k, t->name, g ? g->name : "-", t->dtype,
               st_shape(t->shape), std::filesystem::path(t->file).filename().string(), t->begin);
    total += t->nbytes;
  }
  fmt::print("\n  {} tensors, {:.2f} MiB of tensor data (offsets from the start of each file's data)\n",
             m.tensors().size(), double(total) / (1 << 20));
}

void inspect(const InspectOptions& o) {
  namespace fs = std::filesystem;
  if (fs::is_directory(o.path)) return inspect_hf(o);
  if (fs::path(o.path).extension() == ".safetensors") return inspect_safetensors(o);
  inspect_gguf(o);
}

}  // namespace

void register_inspect(CLI::App& app) {
  auto o = std::make_shared<InspectOptions>();
  auto* cmd = app.add_subcommand("inspect", "Show a model's metadata and tensor table (GGUF like gguf-dump, .safetensors, HF folder)");
  cmd->add_option("path", o->path, "GGUF file, .safetensors file or HF checkpoint folder")->required()->check(CLI::ExistingPath);
  cmd->add_option("--max-items", o->max_items, "Array elements shown per metadata value")->capture_default_str();
  cmd->add_flag("--no-tensors", o->no_tensors, "Show metadata only");
  cmd->callback([o] { inspect(*o); });
}

}  // namespace primal::cli
