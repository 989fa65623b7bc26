// Each subcommand lives in its own file and registers itself on the app here.
#pragma once
#include <CLI/CLI.hpp>

namespace primal::cli {

void register_inspect(CLI::App& app);       // inspect.cpp
void register_convert(CLI::App& app);       // convert.cpp
void register_tokenize(CLI::App& app);      // tokenize.cpp
void register_run(CLI::App& app);           // run.cpp
void register_chat(CLI::App& app);          // chat.cpp
void register_ppl(CLI::App& app);           // ppl.cpp
void register_quantize(CLI::App& app);      // quantize.cpp
void register_export(CLI::App& app);        // export.cpp
void register_synth(CLI::App& app);         // synth.cpp
void register_bench(CLI::App& app);         // bench.cpp
void register_train(CLI::App& app);         // train.cpp
void register_tokenize_data(CLI::App& app); // tokenize_data.cpp
void register_plot(CLI::App& app);          // plot.cpp
void register_bench_train(CLI::App& app);   // bench_train.cpp

}  // namespace primal::cli
