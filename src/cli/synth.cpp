#include "cli/commands.h"
#include "core/error.h"

namespace primal::cli {

void register_synth(CLI::App& app) {
  auto* cmd = app.add_subcommand("synth", "Write a random-weight GGUF of a real model shape (not implemented yet)");
  cmd->allow_extras();
  cmd->callback([] { fail("'synth' is not implemented yet"); });
}

}  // namespace primal::cli
