#include "cli/commands.h"
#include "core/error.h"

namespace primal::cli {

void register_tokenize_data(CLI::App& app) {
  auto* cmd = app.add_subcommand("tokenize-data", "Pre-tokenize a corpus into a binary token file (not implemented yet)");
  cmd->allow_extras();
  cmd->callback([] { fail("'tokenize-data' is not implemented yet"); });
}

}  // namespace primal::cli
