// primal convert HF_DIR OUT.gguf [--type f16|bf16|f32|q8_0]: an HF checkpoint folder to GGUF, the
// way llama.cpp's convert_hf_to_gguf.py writes it (library code in io/convert).
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <memory>

#include "cli/commands.h"
#include "core/error.h"
#include "io/convert.h"

namespace primal::cli {
namespace {

struct ConvertCli {
  std::string dir, out, type = "f16", name, pre;
  bool quiet = false;
};

void run_convert(const ConvertCli& c) {
  ConvertOptions o;
  const auto t = dtype_from_name(c.type);
  if (!t || (*t != DType::F32 && *t != DType::F16 && *t != DType::BF16 && *t != DType::Q8_0))
    fail("--type {}: expected f32, f16, bf16 or q8_0", c.type);
  o.type = *t;
  o.name = c.name;
  o.pre = c.pre;
  if (!c.quiet) o.log = [](const std::string& s) { fmt::print(stderr, "{}\n", s); };
  convert_hf_to_gguf(c.dir, c.out, o);
  if (!c.quiet) fmt::print(stderr, "wrote {}\n", c.out);
}

}  // namespace

void register_convert(CLI::App& app) {
  auto c = std::make_shared<ConvertCli>();
  auto* cmd = app.add_subcommand(
      "convert", "Convert an HF checkpoint folder (config.json, tokenizer.json, safetensors) to GGUF as llama.cpp does");
  cmd->add_option("hf_dir", c->dir, "Checkpoint folder (llama, mistral or qwen2; byte-level BPE tokenizer)")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("out", c->out, "Output GGUF file (written under a temporary name, renamed when complete)")
      ->required();
  cmd->add_option("--type", c->type, "Type of the 2-D weights: f16, bf16, f32 or q8_0 (norms and biases stay f32)")
      ->capture_default_str();
  cmd->add_option("--name", c->name, "general.name (default: from the folder name, as llama.cpp does)");
  cmd->add_option("--pre", c->pre,
                  "tokenizer.ggml.pre to write when the pre-tokenizer is not recognized (gpt-2, llama-bpe, qwen2, ...)");
  cmd->add_flag("-q,--quiet", c->quiet, "No progress on stderr");
  cmd->callback([c] { run_convert(*c); });
}

}  // namespace primal::cli
