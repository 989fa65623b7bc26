#include "cli/commands.h"
#include "core/error.h"

namespace primal::cli {

void register_convert(CLI::App& app) {
  auto* cmd = app.add_subcommand("convert", "Convert an HF checkpoint folder to GGUF (not implemented yet)");
  cmd->allow_extras();
  cmd->callback([] { fail("'convert' is not implemented yet"); });
}

}  // namespace primal::cli
