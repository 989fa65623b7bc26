// Mutated real GGUF files (truncations at many offsets, random bit flips, hostile header fields)
// must either parse or throw primal::Error; never crash. Run under ASan/UBSan
// (-DPRIMAL_SANITIZE=ON) this also proves no read leaves the buffer.
#include <gtest/gtest.h>

#include <fstream>
#include <random>
#include <sstream>
#include <vector>

#include "core/error.h"
#include "io/gguf.h"
#include "quant/dequant.h"
#include "testing.h"

using namespace primal;

namespace {

std::vector<uint8_t> read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Parse; if it parses, touch the first and last row of every tensor. Returns true when parsed.
bool parse_and_touch(const uint8_t* data, size_t size) {
  try {
    auto f = GgufFile::from_buffer(data, size, "mutated");
    std::vector<float> row;
    for (const auto& t : f->tensors()) {
      EXPECT_LE(t.data + t.nbytes, data + size) << t.name;
      EXPECT_GE(t.data, data) << t.name;
      if (!can_dequantize(t.type)) continue;
      row.resize(size_t(t.row_size()));
      const size_t rb = t.nbytes / size_t(t.nrows());
      dequantize_row(t.type, t.data, row.data(), t.row_size());
      dequantize_row(t.type, t.data + (t.nrows() - 1) * rb, row.data(), t.row_size());
    }
    return true;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("mutated"), std::string::npos) << "error must name the file: " << e.what();
    return false;
  }
}

bool parse_and_touch(const std::vector<uint8_t>& buf) { return parse_and_touch(buf.data(), buf.size()); }

// Only the header region matters for the parser; mutating the tensor data cannot make it fail.
size_t header_size(const std::vector<uint8_t>& buf) {
  auto f = GgufFile::from_buffer(buf.data(), buf.size(), "orig");
  return size_t(f->data_offset());
}

// The shortest prefix that is still a complete file: the end of the tensor table for a file
// without tensors, else the end of the last tensor's data.
size_t complete_size(const std::vector<uint8_t>& buf) {
  auto f = GgufFile::from_buffer(buf.data(), buf.size(), "orig");
  size_t end = size_t(f->header_end());
  for (const auto& t : f->tensors()) end = std::max(end, size_t(f->data_offset() + t.offset + t.nbytes));
  return end;
}

}  // namespace

class GgufMutation : public ::testing::TestWithParam<const char*> {};

TEST_P(GgufMutation, TruncationAtManyOffsetsNeverCrashes) {
  const auto buf = read_all(test::data_path(GetParam()));
  ASSERT_FALSE(buf.empty());
  const size_t hdr = header_size(buf);
  const size_t complete = complete_size(buf);
  int rejected = 0, tried = 0;
  // Every offset in the first 4 KiB, then ~400 offsets spread over the rest of the header and data.
  std::vector<size_t> cuts;
  for (size_t k = 0; k < std::min<size_t>(4096, buf.size()); ++k) cuts.push_back(k);
  for (size_t k = 1; k <= 400; ++k) cuts.push_back(buf.size() * k / 401);
  cuts.push_back(hdr - 1);
  cuts.push_back(buf.size() - 1);
  for (size_t cut : cuts) {
    if (cut >= complete) continue;  // trailing padding only: still a complete file
    ++tried;
    if (!parse_and_touch(buf.data(), cut)) ++rejected;  // a prefix of the buffer: no copy needed
  }
  // A GGUF truncated anywhere before its last byte of content is invalid and must be refused.
  EXPECT_EQ(rejected, tried) << "a truncated file was accepted";
  EXPECT_GT(tried, 4000);
}

TEST_P(GgufMutation, RandomBitFlipsNeverCrash) {
  const auto orig = read_all(test::data_path(GetParam()));
  const size_t hdr = header_size(orig);
  std::mt19937_64 rng(1234);
  int parsed = 0, rejected = 0;
  auto buf = orig;  // flipped in place and restored, so the 35 MB file is copied once
  for (int iter = 0; iter < 300; ++iter) {
    std::vector<std::pair<size_t, uint8_t>> flipped;
    const int flips = 1 + int(rng() % 8);
    for (int k = 0; k < flips; ++k) {
      const size_t pos = rng() % hdr;  // flip inside the header (metadata and tensor table)
      flipped.emplace_back(pos, buf[pos]);
      buf[pos] ^= uint8_t(1u << (rng() % 8));
    }
    (parse_and_touch(buf) ? parsed : rejected)++;
    for (auto it = flipped.rbegin(); it != flipped.rend(); ++it) buf[it->first] = it->second;
  }
  EXPECT_GT(rejected, 0) << "no bit flip was detected: the validation is too weak";
  RecordProperty("parsed", parsed);
  RecordProperty("rejected", rejected);
}

INSTANTIATE_TEST_SUITE_P(RealFiles, GgufMutation,
                         ::testing::Values("vocab/ggml-vocab-llama-spm.gguf",
                                           "models/ref-llama-code/ref-llama-code-Q8_0.gguf"));

// Hand-built hostile headers: each must be refused with a message that says what is wrong.
namespace {
struct Builder {
  std::vector<uint8_t> b;
  template <class T>
  Builder& put(T v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    b.insert(b.end(), p, p + sizeof(T));
    return *this;
  }
  Builder& str(const std::string& s) {
    put<uint64_t>(s.size());
    b.insert(b.end(), s.begin(), s.end());
    return *this;
  }
  Builder& header(uint64_t n_tensors, uint64_t n_kv) {
    b.insert(b.end(), {'G', 'G', 'U', 'F'});
    return put<uint32_t>(3).put<uint64_t>(n_tensors).put<uint64_t>(n_kv);
  }
  Builder& pad(size_t align) {
    while (b.size() % align) b.push_back(0);
    return *this;
  }
};

std::string error_of(const std::vector<uint8_t>& b) {
  try {
    GgufFile::from_buffer(b.data(), b.size(), "hostile");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(GgufHostile, HugeCounts) {
  EXPECT_NE(error_of(Builder().header(~0ull, 0).b).find("tensor count"), std::string::npos);
  EXPECT_NE(error_of(Builder().header(0, 1ull << 60).b).find("metadata count"), std::string::npos);
  // An array claiming 2^40 strings in a tiny file.
  Builder a;
  a.header(0, 1).str("k").put<uint32_t>(9).put<uint32_t>(8).put<uint64_t>(1ull << 40);
  EXPECT_NE(error_of(a.b).find("cannot fit"), std::string::npos);
  Builder s;
  s.header(0, 1).str("k").put<uint32_t>(8).put<uint64_t>(~0ull);
  EXPECT_NE(error_of(s.b).find("absurd length"), std::string::npos);
}

TEST(GgufHostile, TensorTableProblems) {
  auto one_tensor = [](uint64_t dim0, uint32_t type, uint64_t offset, size_t data_bytes, uint32_t ndims = 1) {
    Builder t;
    t.header(1, 0).str("w").put<uint32_t>(ndims);
    for (uint32_t d = 0; d < ndims; ++d) t.put<uint64_t>(d == 0 ? dim0 : 1ull << 40);
    t.put<uint32_t>(type).put<uint64_t>(offset).pad(32);
    t.b.resize(t.b.size() + data_bytes, 0);
    return t.b;
  };
  EXPECT_EQ(error_of(one_tensor(32, 8, 0, 34)), "");                                     // valid Q8_0 block
  EXPECT_NE(error_of(one_tensor(32, 8, 0, 33)).find("past the end"), std::string::npos);  // truncated data
  EXPECT_NE(error_of(one_tensor(32, 8, 1, 64)).find("not aligned"), std::string::npos);
  EXPECT_NE(error_of(one_tensor(31, 8, 0, 64)).find("multiple"), std::string::npos);  // partial block
  EXPECT_NE(error_of(one_tensor(32, 77, 0, 64)).find("unknown type"), std::string::npos);
  EXPECT_NE(error_of(one_tensor(0, 0, 0, 64)).find("absurd dimension"), std::string::npos);
  EXPECT_NE(error_of(one_tensor(32, 0, 0, 64, 5)).find("dimensions"), std::string::npos);
  EXPECT_NE(error_of(one_tensor(1ull << 40, 0, 0, 64, 4)).find("absurd"), std::string::npos);  // overflow

  Builder ov;  // two tensors sharing bytes
  ov.header(2, 0);
  ov.str("a").put<uint32_t>(1).put<uint64_t>(32).put<uint32_t>(0).put<uint64_t>(0);
  ov.str("b").put<uint32_t>(1).put<uint64_t>(32).put<uint32_t>(0).put<uint64_t>(64);
  ov.pad(32);
  ov.b.resize(ov.b.size() + 256, 0);
  EXPECT_NE(error_of(ov.b).find("overlap"), std::string::npos);

  Builder dup;
  dup.header(0, 2).str("k").put<uint32_t>(4).put<uint32_t>(1).str("k").put<uint32_t>(4).put<uint32_t>(2);
  EXPECT_NE(error_of(dup.b).find("duplicate"), std::string::npos);

  Builder al;  // alignment that is not a power of two
  al.header(0, 1).str("general.alignment").put<uint32_t>(4).put<uint32_t>(24);
  EXPECT_NE(error_of(al.b).find("power of two"), std::string::npos);

  Builder nest;  // arrays nested 100 deep
  nest.header(0, 1).str("k").put<uint32_t>(9);
  for (int d = 0; d < 100; ++d) nest.put<uint32_t>(9).put<uint64_t>(1);
  EXPECT_NE(error_of(nest.b).find("nested"), std::string::npos);
}
