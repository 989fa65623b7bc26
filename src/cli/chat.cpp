#include "cli/commands.h"
#include "core/error.h"

namespace primal::cli {

void register_chat(CLI::App& app) {
  auto* cmd = app.add_subcommand("chat", "Interactive chat with a model's chat template (not implemented yet)");
  cmd->allow_extras();
  cmd->callback([] { fail("'chat' is not implemented yet"); });
}

}  // namespace primal::cli
