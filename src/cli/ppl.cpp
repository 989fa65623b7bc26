#include "cli/commands.h"
#include "core/error.h"

namespace primal::cli {

void register_ppl(CLI::App& app) {
  auto* cmd = app.add_subcommand("ppl", "Measure perplexity on a text file (not implemented yet)");
  cmd->allow_extras();
  cmd->callback([] { fail("'ppl' is not implemented yet"); });
}

}  // namespace primal::cli
