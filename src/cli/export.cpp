#include "cli/commands.h"
#include "core/error.h"

namespace primal::cli {

void register_export(CLI::App& app) {
  auto* cmd = app.add_subcommand("export", "Export a model as standard GGUF that llama.cpp runs (not implemented yet)");
  cmd->allow_extras();
  cmd->callback([] { fail("'export' is not implemented yet"); });
}

}  // namespace primal::cli
