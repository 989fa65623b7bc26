#include "train/token_file.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <unistd.h>

#include "core/error.h"

namespace primal::train {
namespace {

constexpr char kMagic[8] = {'P', 'R', 'M', 'L', 'T', 'O', 'K', '1'};

template <class T>
T load_le(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);  // the hosts primal runs on are little-endian
  return v;
}

}  // namespace

bool is_token_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char m[8] = {};
  return in.read(m, 8) && std::memcmp(m, kMagic, 8) == 0;
}

TokenFileHeader read_token_file_header(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  PRIMAL_CHECK(in, "{}: cannot open: {}", path, std::strerror(errno));
  uint8_t b[kTokenFileHeaderBytes];
  PRIMAL_CHECK(in.read(reinterpret_cast<char*>(b), sizeof b), "{}: truncated token file header", path);
  PRIMAL_CHECK(std::memcmp(b, kMagic, 8) == 0, "{}: not a primal token file (bad magic)", path);
  TokenFileHeader h;
  h.width = load_le<uint32_t>(b + 8);
  h.vocab = load_le<uint32_t>(b + 12);
  h.eos = load_le<int32_t>(b + 16);
  h.n_tokens = load_le<uint64_t>(b + 24);
  PRIMAL_CHECK(h.width == 2 || h.width == 4, "{}: token width {} is not 2 or 4", path, h.width);
  PRIMAL_CHECK(h.vocab > 0, "{}: vocabulary size 0", path);
  PRIMAL_CHECK(h.eos >= -1 && h.eos < int64_t(h.vocab), "{}: EOS id {} outside the vocabulary", path, h.eos);
  const uint64_t size = std::filesystem::file_size(path);
  PRIMAL_CHECK(h.n_tokens <= (size - kTokenFileHeaderBytes) / h.width &&
                   size == kTokenFileHeaderBytes + h.n_tokens * h.width,
               "{}: {} bytes do not hold the {} tokens of {} bytes the header announces", path, size, h.n_tokens,
               h.width);
  return h;
}

std::vector<int32_t> read_tokens(const std::string& path, const TokenFileHeader& h, uint64_t begin, uint64_t end) {
  PRIMAL_CHECK(begin <= end && end <= h.n_tokens, "{}: token range {}..{} outside 0..{}", path, begin, end,
               h.n_tokens);
  std::ifstream in(path, std::ios::binary);
  PRIMAL_CHECK(in, "{}: cannot open: {}", path, std::strerror(errno));
  std::vector<uint8_t> raw(size_t((end - begin) * h.width));
  in.seekg(std::streamoff(kTokenFileHeaderBytes + begin * h.width));
  PRIMAL_CHECK(in.read(reinterpret_cast<char*>(raw.data()), std::streamsize(raw.size())), "{}: truncated tokens",
               path);
  std::vector<int32_t> out(size_t(end - begin));
  for (size_t i = 0; i < out.size(); ++i) {
    const int64_t v = h.width == 2 ? int64_t(load_le<uint16_t>(&raw[2 * i])) : int64_t(load_le<int32_t>(&raw[4 * i]));
    PRIMAL_CHECK(v >= 0 && v < int64_t(h.vocab), "{}: token {} at position {} outside the vocabulary of {}", path, v,
                 begin + i, h.vocab);
    out[i] = int32_t(v);
  }
  return out;
}

TokenFileWriter::TokenFileWriter(const std::string& path, uint32_t vocab, int32_t eos)
    : path_(path), tmp_(path + ".tmp" + std::to_string(getpid())), vocab_(vocab), width_(vocab <= 65536 ? 2 : 4),
      eos_(eos) {
  FILE* f = std::fopen(tmp_.c_str(), "wb");
  PRIMAL_CHECK(f, "{}: cannot create: {}", tmp_, std::strerror(errno));
  f_ = f;
  uint8_t zero[kTokenFileHeaderBytes] = {};
  PRIMAL_CHECK(std::fwrite(zero, 1, sizeof zero, f) == sizeof zero, "{}: write failed", tmp_);
}

TokenFileWriter::~TokenFileWriter() {
  if (f_) std::fclose(static_cast<FILE*>(f_));
  if (!done_) std::remove(tmp_.c_str());
}

void TokenFileWriter::write(const std::vector<int32_t>& tokens) {
  std::vector<uint8_t> raw(tokens.size() * width_);
  for (size_t i = 0; i < tokens.size(); ++i) {
    PRIMAL_CHECK(tokens[i] >= 0 && uint32_t(tokens[i]) < vocab_, "{}: token {} outside the vocabulary", path_,
                 tokens[i]);
    if (width_ == 2) {
      const uint16_t v = uint16_t(tokens[i]);
      std::memcpy(&raw[2 * i], &v, 2);
    } else {
      std::memcpy(&raw[4 * i], &tokens[i], 4);
    }
  }
  PRIMAL_CHECK(std::fwrite(raw.data(), 1, raw.size(), static_cast<FILE*>(f_)) == raw.size(), "{}: write failed: {}",
               tmp_, std::strerror(errno));
  n_ += tokens.size();
}

void TokenFileWriter::finish() {
  FILE* f = static_cast<FILE*>(f_);
  uint8_t h[kTokenFileHeaderBytes] = {};
  std::memcpy(h, kMagic, 8);
  std::memcpy(h + 8, &width_, 4);
  std::memcpy(h + 12, &vocab_, 4);
  std::memcpy(h + 16, &eos_, 4);
  std::memcpy(h + 24, &n_, 8);
  PRIMAL_CHECK(std::fseek(f, 0, SEEK_SET) == 0 && std::fwrite(h, 1, sizeof h, f) == sizeof h &&
                   std::fflush(f) == 0 && ::fsync(fileno(f)) == 0,
               "{}: write failed: {}", tmp_, std::strerror(errno));
  std::fclose(f);
  f_ = nullptr;
  PRIMAL_CHECK(std::rename(tmp_.c_str(), path_.c_str()) == 0, "{}: cannot rename the finished file into place: {}",
               path_, std::strerror(errno));
  done_ = true;
}

}  // namespace primal::train
