#include "cli/commands.h"
#include "core/error.h"

namespace primal::cli {

void register_bench(CLI::App& app) {
  auto* cmd = app.add_subcommand("bench", "Benchmark prompt processing and generation speed (not implemented yet)");
  cmd->allow_extras();
  cmd->callback([] { fail("'bench' is not implemented yet"); });
}

}  // namespace primal::cli
