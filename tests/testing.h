// Shared test helpers: where the real data lives, and running the primal binary.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

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

// One prompt of models/ref-llama-code/reference.json (HF transformers outputs): the prompt's ids,
// the last position's 20 largest logits (ids and values) and 32 greedy tokens.
struct RefCase {
  std::vector<int32_t> prompt_ids, top20_ids, greedy32;
  std::vector<double> top20;
};
std::vector<RefCase> reference_cases();

}  // namespace primal::test
