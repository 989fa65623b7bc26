#include "model/dump.h"

#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.h"

namespace primal {

std::string npy_bytes(const float* data, const std::vector<int64_t>& shape) {
  int64_t n = 1;
  std::string dims;  // numpy's spelling: (3,) for 1-D, (2, 3) otherwise
  for (size_t k = 0; k < shape.size(); ++k) {
    n *= shape[k];
    dims += (k ? ", " : "") + std::to_string(shape[k]);
  }
  if (shape.size() == 1) dims += ",";
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
  // magic (6) + version (2) + header length (2) + header, padded with spaces to a multiple of 64,
  // ending in a newline.
  const size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::string out = std::string("\x93NUMPY\x01\x00", 8);
  out += char(header.size() & 0xff);
  out += char(header.size() >> 8);
  out += header;
  out.append(reinterpret_cast<const char*>(data), size_t(n) * sizeof(float));
  return out;
}

DumpFn npy_dumper(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) fail("{}: cannot create the dump folder: {}", dir, ec.message());
  return [dir](const std::string& name, const float* data, const std::vector<int64_t>& shape) {
    const std::string path = dir + "/" + name + ".npy";
    std::ofstream f(path, std::ios::binary);
    const std::string bytes = npy_bytes(data, shape);
    f.write(bytes.data(), std::streamsize(bytes.size()));
    if (!f) fail("{}: cannot write the dump", path);
  };
}

DumpFn summary_dumper(std::FILE* out) {
  return [out](const std::string& name, const float* data, const std::vector<int64_t>& shape) {
    int64_t n = 1;
    std::string dims;
    for (int64_t d : shape) {
      n *= d;
      dims += (dims.empty() ? "" : " x ") + std::to_string(d);
    }
    double sum = 0, asum = 0;
    for (int64_t i = 0; i < n; ++i) {
      sum += data[i];
      asum += std::fabs(data[i]);
    }
    std::string head;
    for (int64_t i = 0; i < std::min<int64_t>(n, 4); ++i) head += fmt::format(" {:.6g}", data[i]);
    fmt::print(out, "{:<16} [{}] sum {:.6g} mean|x| {:.6g} first{}\n", name, dims, sum, asum / double(n), head);
  };
}

DumpFn both(DumpFn a, DumpFn b) {
  if (!a) return b;
  if (!b) return a;
  return [a, b](const std::string& name, const float* data, const std::vector<int64_t>& shape) {
    a(name, data, shape);
    b(name, data, shape);
  };
}

}  // namespace primal
