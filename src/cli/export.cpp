// primal export IN.gguf OUT.gguf --type iq4_nl|q8_0|f16: a primal model as standard GGUF that
// llama.cpp runs (library code and exactness rules in quant/lut_export.h).
#include <fmt/format.h>

#include <memory>

#include "cli/commands.h"
#include "core/error.h"
#include "quant/lut_export.h"

namespace primal::cli {
namespace {

struct ExportCli {
  std::string in, out, type = "iq4_nl";
  bool quiet = false;
};

void run_export(const ExportCli& c) {
  ExportOptions o;
  const auto t = dtype_from_name(c.type);
  if (!t || (*t != DType::IQ4_NL && *t != DType::Q8_0 && *t != DType::F16))
    fail("--type {}: expected iq4_nl, q8_0 or f16", c.type);
  o.type = *t;
  if (!c.quiet) o.log = [](const std::string& s) { fmt::print(stderr, "{}\n", s); };
  const ExportReport r = export_model(c.in, c.out, o);
  if (!c.quiet)
    fmt::print(stderr, "wrote {}: {} matrices exact, {} requantized\n", c.out, r.exact, r.requantized);
}

}  // namespace

void register_export(CLI::App& app) {
  auto c = std::make_shared<ExportCli>();
  auto* cmd = app.add_subcommand("export", "Export a primal model (LUT or float GGUF) as standard GGUF that llama.cpp runs");
  cmd->add_option("in", c->in, "Input GGUF (a LUT model from `primal quantize`, or a float model)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("out", c->out, "Output GGUF (written under a temporary name, renamed when complete)")->required();
  cmd->add_option("--type", c->type,
                  "Type of the matrices: iq4_nl (exact from lut4/iq4nl/group 32), q8_0 (exact from "
                  "lut8/uniform/group 32) or f16")
      ->capture_default_str();
  cmd->add_flag("-q,--quiet", c->quiet, "No progress on stderr");
  cmd->callback([c] { run_export(*c); });
}

}  // namespace primal::cli
