#include "cli/commands.h"
#include "core/error.h"

namespace primal::cli {

void register_quantize(CLI::App& app) {
  auto* cmd = app.add_subcommand("quantize", "Quantize a float model into LUT form (not implemented yet)");
  cmd->allow_extras();
  cmd->callback([] { fail("'quantize' is not implemented yet"); });
}

}  // namespace primal::cli
