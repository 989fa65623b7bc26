// primal inspect FILE: metadata and tensor table of a GGUF file, like gguf-dump.
#include <fmt/format.h>

#include <memory>

#include "cli/commands.h"
#include "io/gguf.h"

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
}

}  // namespace

void register_inspect(CLI::App& app) {
  auto o = std::make_shared<InspectOptions>();
  auto* cmd = app.add_subcommand("inspect", "Show a model file's metadata and tensor table (like gguf-dump)");
  cmd->add_option("file", o->path, "GGUF file")->required()->check(CLI::ExistingFile);
  cmd->add_option("--max-items", o->max_items, "Array elements shown per metadata value")->capture_default_str();
  cmd->add_flag("--no-tensors", o->no_tensors, "Show metadata only");
  cmd->callback([o] { inspect_gguf(*o); });
}

}  // namespace primal::cli
