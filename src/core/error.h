// Errors: library code throws primal::Error with a message that names the file and the problem;
// the CLI catches it, prints "primal: error: ..." and exits non-zero. Never exit() in library code.
#pragma once
#include <fmt/format.h>
#include <stdexcept>
#include <string>

namespace primal {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

template <class... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace primal

// PRIMAL_CHECK(cond, "format", args...): throw primal::Error when cond is false.
#define PRIMAL_CHECK(cond, ...)              \
  do {                                       \
    if (!(cond)) ::primal::fail(__VA_ARGS__); \
  } while (0)
