#include "cli/commands.h"
#include "core/error.h"

namespace primal::cli {

void register_tokenize(CLI::App& app) {
  auto* cmd = app.add_subcommand("tokenize", "Tokenize text with a model's vocabulary (not implemented yet)");
  cmd->allow_extras();
  cmd->callback([] { fail("'tokenize' is not implemented yet"); });
}

}  // namespace primal::cli
