// Shared test helpers: where the real data lives, and running the primal binary.
#pragma once
#include <string>

namespace primal::test {

// Path under the shared data folder (models/, vocab/, text/); fails the test if it is missing.
std::string data_path(const std::string& rel);

struct RunResult {
  int exit_code;
  std::string out;  // stdout
  std::string err;  // stderr
};
// Run the built `primal` binary (or $PRIMAL_BIN) with the given argument string (shell-quoted by
// the caller).
RunResult run_primal(const std::string& args);

// A fresh temporary directory, removed at exit of the test program.
std::string temp_dir();

}  // namespace primal::test
