#include <gtest/gtest.h>

#include <filesystem>

#include "core/error.h"
#include "hf_fixture.h"
#include "io/gguf.h"
#include "io/gguf_writer.h"
#include "testing.h"

using namespace primal;
namespace fs = std::filesystem;

namespace {

// Deep equality of two metadata values, type included.
void expect_same(const GgufValue& a, const GgufValue& b, const std::string& key) {
  ASSERT_EQ(a.type, b.type) << key;
  switch (a.type) {
    case GgufType::STRING: EXPECT_EQ(a.str, b.str) << key; break;
    case GgufType::FLOAT32: case GgufType::FLOAT64: EXPECT_EQ(a.f, b.f) << key; break;
    case GgufType::ARRAY:
      ASSERT_EQ(a.elem, b.elem) << key;
      ASSERT_EQ(a.arr.size(), b.arr.size()) << key;
      for (size_t k = 0; k < a.arr.size(); ++k) expect_same(a.arr[k], b.arr[k], key + "[" + std::to_string(k) + "]");
      break;
    default:  // integers and bools: both fields (u64 values do not fit as_int)
      EXPECT_EQ(a.u, b.u) << key;
      EXPECT_EQ(a.i, b.i) << key;
  }
}

std::vector<uint8_t> pattern(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t k = 0; k < n; ++k) v[k] = uint8_t(seed + k * 7);
  return v;
}

std::vector<std::string> files_in(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  return out;
}

}  // namespace

TEST(GgufWriter, RoundTripsEveryMetadataTypeAndTensorType) {
  GgufWriter w;
  w.add_kv("general.architecture", GgufValue::string("llama"));
  w.add_kv("t.u8", GgufValue::u8(250));
  w.add_kv("t.i8", GgufValue::i8(-120));
  w.add_kv("t.u16", GgufValue::u16(65000));
  w.add_kv("t.i16", GgufValue::i16(-32000));
  w.add_kv("t.u32", GgufValue::u32(4000000000u));
  w.add_kv("t.i32", GgufValue::i32(-2000000000));
  w.add_kv("t.u64", GgufValue::u64(18000000000000000000ull));
  w.add_kv("t.i64", GgufValue::i64(-9000000000000000000ll));
  w.add_kv("t.f32", GgufValue::f32(3.25f));
  w.add_kv("t.f64", GgufValue::f64(-1.0 / 3.0));
  w.add_kv("t.bool", GgufValue::boolean(true));
  w.add_kv("t.str", GgufValue::string(std::string("with \0 nul and \xc4\xa0 utf-8", 23)));
  w.add_kv("t.empty_str", GgufValue::string(""));
  w.add_kv("t.strs", GgufValue::strings({"a", "", "ccc"}));
  w.add_kv("t.f32s", GgufValue::f32s({1.5f, -2.0f}));
  w.add_kv("t.i32s", GgufValue::i32s({}));
  w.add_kv("t.nested", GgufValue::array(GgufType::ARRAY, {GgufValue::i32s({1, 2}), GgufValue::i32s({}),
                                                          GgufValue::array(GgufType::STRING, {GgufValue::string("x")})}));
  w.add_kv("t.deep", GgufValue::array(GgufType::ARRAY, {GgufValue::array(GgufType::ARRAY, {GgufValue::f32s({7.0f})})}));
  w.add_kv("t.bools", GgufValue::array(GgufType::BOOL, {GgufValue::boolean(false), GgufValue::boolean(true)}));

  struct T {
    std::string name;
    DType type;
    std::vector<int64_t> ne;
    std::vector<uint8_t> data;
  };
  std::vector<T> ts = {
      {"a.f32", DType::F32, {3}, pattern(12, 1)},           // 12 bytes: padding follows
      {"b.f16", DType::F16, {5, 3}, pattern(30, 2)},
      {"c.q8_0", DType::Q8_0, {64, 2}, pattern(136, 3)},
      {"d.bf16", DType::BF16, {2, 3, 4}, pattern(48, 4)},
      {"e.q4_k", DType::Q4_K, {256, 1, 1, 2}, pattern(288, 5)},
      {"f.i32", DType::I32, {1}, pattern(4, 6)},
  };
  for (const auto& t : ts) w.add_tensor(t.name, t.type, t.ne, t.data.data(), t.data.size());

  const std::string path = test::temp_dir() + "/roundtrip.gguf";
  std::vector<std::string> progressed;
  w.write(path, [&](size_t i, size_t n, const std::string& name) {
    EXPECT_EQ(n, ts.size());
    EXPECT_EQ(i, progressed.size());
    progressed.push_back(name);
  });
  EXPECT_EQ(progressed.size(), ts.size());

  GgufFile f(path);
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  ASSERT_EQ(f.kv().size(), w.kv().size());
  for (size_t k = 0; k < f.kv().size(); ++k) {
    EXPECT_EQ(f.kv()[k].first, w.kv()[k].first);  // order kept
    expect_same(f.kv()[k].second, w.kv()[k].second, w.kv()[k].first);
  }
  EXPECT_EQ(f.get("t.str").str.size(), 23u);
  EXPECT_EQ(f.get("t.nested").arr[0].arr[1].as_int(), 2);
  ASSERT_EQ(f.tensors().size(), ts.size());
  EXPECT_EQ(f.data_offset() % 32, 0u);
  for (size_t k = 0; k < ts.size(); ++k) {
    const auto& g = f.tensors()[k];
    EXPECT_EQ(g.name, ts[k].name);
    EXPECT_EQ(g.type, ts[k].type);
    EXPECT_EQ(g.ne, ts[k].ne);
    EXPECT_EQ(g.offset % 32, 0u) << g.name;
    ASSERT_EQ(g.nbytes, ts[k].data.size());
    EXPECT_EQ(std::vector<uint8_t>(g.data, g.data + g.nbytes), ts[k].data) << g.name;
  }
  // Every tensor is padded to the alignment, the last one included (as ggml writes).
  const auto& last = f.tensors().back();
  EXPECT_EQ(f.file_size(), f.data_offset() + last.offset + 32);
}

TEST(GgufWriter, HonoursGeneralAlignment) {
  GgufWriter w;
  w.add_kv("general.alignment", GgufValue::u32(256));
  const auto a = pattern(4, 9), b = pattern(8, 10);
  w.add_tensor("a", DType::F32, {1}, a.data(), a.size());
  w.add_tensor("b", DType::F32, {2}, b.data(), b.size());
  const std::string path = test::temp_dir() + "/align.gguf";
  w.write(path);
  GgufFile f(path);
  EXPECT_EQ(f.alignment(), 256u);
  EXPECT_EQ(f.data_offset() % 256, 0u);
  EXPECT_EQ(f.tensor("b").offset, 256u);
  EXPECT_EQ(std::vector<uint8_t>(f.tensor("b").data, f.tensor("b").data + 8), b);
}

// llama.cpp's own file, read and written back, is reproduced byte for byte: same metadata encoding,
// same tensor info layout, same offsets and padding.
TEST(GgufWriter, RewritesLlamaCppFileByteForByte) {
  const std::string src = test::data_path("models/ref-llama-code/ref-llama-code-Q8_0.gguf");
  GgufFile f(src);
  GgufWriter w;
  copy_gguf(f, w);
  const std::string out = test::temp_dir() + "/rewrite-q8_0.gguf";
  w.write(out);
  const std::string a = test::read_file(src), b = test::read_file(out);
  ASSERT_EQ(a.size(), b.size());
  size_t first_diff = a.size();
  for (size_t k = 0; k < a.size(); ++k)
    if (a[k] != b[k]) {
      first_diff = k;
      break;
    }
  EXPECT_EQ(first_diff, a.size()) << "first differing byte at offset " << first_diff;
}

TEST(GgufWriter, StreamsOneTensorAtATime) {
  GgufWriter w;
  int calls = 0;
  for (int k = 0; k < 3; ++k)
    w.add_tensor("t" + std::to_string(k), DType::F32, {8}, [&calls, k](uint8_t* dst, size_t n) {
      EXPECT_EQ(n, 32u);
      EXPECT_EQ(calls, k);  // in order, each once
      ++calls;
      for (size_t i = 0; i < n / 4; ++i) reinterpret_cast<float*>(dst)[i] = float(k * 100 + int(i));
    });
  EXPECT_EQ(calls, 0);  // nothing produced before write()
  const std::string path = test::temp_dir() + "/stream.gguf";
  w.write(path);
  EXPECT_EQ(calls, 3);
  GgufFile f(path);
  EXPECT_EQ(reinterpret_cast<const float*>(f.tensor("t2").data)[7], 207.0f);
}

// A failure while writing leaves no file under the final name (and no temporary file), and an
// older file of that name is left as it was.
TEST(GgufWriter, InterruptedWriteLeavesNoTruncatedFile) {
  const std::string dir = test::temp_dir() + "/atomic";
  fs::create_directories(dir);
  auto failing = [] {
    auto w = std::make_unique<GgufWriter>();
    w->add_kv("general.architecture", GgufValue::string("llama"));
    const auto ok = pattern(1 << 20, 1);
    w->add_tensor("ok", DType::F32, {1 << 18}, [ok](uint8_t* dst, size_t n) { std::memcpy(dst, ok.data(), n); });
    w->add_tensor("bad", DType::F32, {4}, [](uint8_t*, size_t) { fail("simulated failure in the producer"); });
    return w;
  };
  EXPECT_THROW(failing()->write(dir + "/out.gguf"), Error);
  EXPECT_FALSE(fs::exists(dir + "/out.gguf"));
  EXPECT_TRUE(files_in(dir).empty());

  test::write_file(dir + "/out.gguf", "previous contents");
  EXPECT_THROW(failing()->write(dir + "/out.gguf"), Error);
  EXPECT_EQ(test::read_file(dir + "/out.gguf"), "previous contents");
  EXPECT_EQ(files_in(dir).size(), 1u);
}

TEST(GgufWriter, RefusesInvalidInput) {
  GgufWriter w;
  w.add_kv("k", GgufValue::u32(1));
  EXPECT_THROW(w.add_kv("k", GgufValue::u32(2)), Error);
  EXPECT_THROW(w.add_kv("mixed", GgufValue::array(GgufType::INT32, {GgufValue::i32(1), GgufValue::f32(2)})), Error);
  const float x[32] = {};
  w.add_tensor("t", DType::F32, {4}, x, 16);
  EXPECT_THROW(w.add_tensor("t", DType::F32, {4}, x, 16), Error);                  // duplicate
  EXPECT_THROW(w.add_tensor("q", DType::Q8_0, {31}, x, 34), Error);                // not whole blocks
  EXPECT_THROW(w.add_tensor(std::string(64, 'n'), DType::F32, {1}, x, 4), Error);  // name too long
  EXPECT_THROW(w.add_tensor("z", DType::F32, {0}, x, 0), Error);
  EXPECT_THROW(w.add_tensor("five", DType::F32, {1, 1, 1, 1, 1}, x, 4), Error);
  EXPECT_THROW(w.add_tensor("lut", DType::LUT4, {31}, x, 16), Error);  // LUT4 packs indices in pairs

  // A tensor whose bytes do not match its shape is caught at write time, naming it.
  GgufWriter w2;
  w2.add_tensor("short", DType::F32, {8}, x, 16);
  try {
    w2.write(test::temp_dir() + "/short.gguf");
    FAIL() << "wrote a tensor with the wrong byte count";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'short'"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(test::temp_dir() + "/short.gguf"));

  GgufWriter w3;
  w3.add_kv("general.alignment", GgufValue::u32(48));
  EXPECT_THROW(w3.write(test::temp_dir() + "/a48.gguf"), Error);

  try {
    GgufWriter().write("/nonexistent-dir/x.gguf");
    FAIL() << "wrote into a missing folder";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent-dir/x.gguf"), std::string::npos) << e.what();
  }
}
