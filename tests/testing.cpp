#include <fstream>
#include <nlohmann/json.hpp>
#include "testing.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace primal::test {

std::string data_path(const std::string& rel) {
  const char* env = std::getenv("PRIMAL_DATA_DIR");
  const std::string root = env && *env ? env : PRIMAL_DATA_DIR;
  std::string p = root + "/" + rel;
  if (!std::filesystem::exists(p)) {
    ADD_FAILURE() << "missing test data " << p << " (set PRIMAL_DATA_DIR)";
  }
  return p;
}

static std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string temp_dir() {
  static std::string dir = [] {
    std::string tmpl = (std::filesystem::temp_directory_path() / "primal-test-XXXXXX").string();
    char* d = mkdtemp(tmpl.data());
    if (!d) std::abort();
    std::string s = d;
    return s;
  }();
  static struct Cleanup {
    ~Cleanup() {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }
  } cleanup;
  return dir;
}

RunResult run_primal(const std::string& args) {
  const std::string d = temp_dir();
  static int counter = 0;
  const std::string out = d + "/run" + std::to_string(getpid()) + "_" + std::to_string(counter) + ".out";
  const std::string err = d + "/run" + std::to_string(getpid()) + "_" + std::to_string(counter++) + ".err";
  // PRIMAL_BIN overrides the build-time path (the GPU machine runs binaries copied elsewhere).
  const char* bin = std::getenv("PRIMAL_BIN");
  const std::string exe = bin && *bin ? bin : PRIMAL_BINARY;
  const std::string cmd = exe + " " + args + " >" + out + " 2>" + err + " </dev/null";
  const int status = std::system(cmd.c_str());
  RunResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

std::vector<RefCase> reference_cases() {
  std::ifstream f(data_path("models/ref-llama-code/reference.json"));
  const auto j = nlohmann::json::parse(f);
  std::vector<RefCase> out;
  for (const auto& r : j.at("reference_outputs"))
    out.push_back({r.at("prompt_ids").get<std::vector<int32_t>>(), r.at("last_logits_top20_ids").get<std::vector<int32_t>>(),
                   r.at("greedy32_ids").get<std::vector<int32_t>>(), r.at("last_logits_top20").get<std::vector<double>>()});
  return out;
}

}  // namespace primal::test
