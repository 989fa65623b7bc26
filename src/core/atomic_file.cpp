#include "core/atomic_file.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "core/error.h"

namespace primal {

void write_file_atomic(const std::string& path, std::string_view bytes) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    PRIMAL_CHECK(f, "{}: cannot create: {}", tmp, std::strerror(errno));
    f.write(bytes.data(), std::streamsize(bytes.size()));
    PRIMAL_CHECK(f.good(), "{}: write failed", tmp);
  }
  PRIMAL_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "{}: cannot rename into place: {}", path,
               std::strerror(errno));
}

}  // namespace primal
