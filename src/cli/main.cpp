// primal: one binary, one subcommand per file (see commands.h).
#include <cstdio>
#include <exception>

#include "cli/commands.h"
#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"primal: run, quantize and train LLMs whose weights are low-bit look-up-table indices"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "primal 0.1");
  using namespace primal::cli;
  register_inspect(app);
  register_convert(app);
  register_tokenize(app);
  register_run(app);
  register_chat(app);
  register_ppl(app);
  register_quantize(app);
  register_export(app);
  register_synth(app);
  register_bench(app);
  register_train(app);
  register_tokenize_data(app);
  register_plot(app);
  register_bench_train(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const primal::Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "primal: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fflush(stdout);
    std::fprintf(stderr, "primal: error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "primal: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
