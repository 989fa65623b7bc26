#include "cli/commands.h"
#include "core/error.h"

namespace primal::cli {

void register_plot(CLI::App& app) {
  auto* cmd = app.add_subcommand("plot", "Plot a training metrics.jsonl (not implemented yet)");
  cmd->allow_extras();
  cmd->callback([] { fail("'plot' is not implemented yet"); });
}

}  // namespace primal::cli
