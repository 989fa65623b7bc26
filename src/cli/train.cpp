#include "cli/commands.h"
#include "core/error.h"

namespace primal::cli {

void register_train(CLI::App& app) {
  auto* cmd = app.add_subcommand("train", "Discrete training of a LUT model (not implemented yet)");
  cmd->allow_extras();
  cmd->callback([] { fail("'train' is not implemented yet"); });
}

}  // namespace primal::cli
