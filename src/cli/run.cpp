#include "cli/commands.h"
#include "core/error.h"

namespace primal::cli {

void register_run(CLI::App& app) {
  auto* cmd = app.add_subcommand("run", "Generate text from a prompt (not implemented yet)");
  cmd->allow_extras();
  cmd->callback([] { fail("'run' is not implemented yet"); });
}

}  // namespace primal::cli
