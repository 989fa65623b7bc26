#include "cli/commands.h"
#include "core/error.h"

namespace primal::cli {

void register_bench_train(CLI::App& app) {
  auto* cmd = app.add_subcommand("bench-train", "Benchmark training throughput (not implemented yet)");
  cmd->allow_extras();
  cmd->callback([] { fail("'bench-train' is not implemented yet"); });
}

}  // namespace primal::cli
