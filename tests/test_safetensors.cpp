#include <gtest/gtest.h>

#include <filesystem>

#include "core/error.h"
#include "core/half.h"
#include "hf_fixture.h"
#include "io/gguf.h"
#include "io/safetensors.h"
#include "testing.h"

using namespace primal;
namespace fs = std::filesystem;

namespace {

const std::string kRef = "models/ref-llama-code";

std::unique_ptr<SafetensorsFile> parse(const std::string& bytes, const std::string& name = "mem.safetensors") {
  return SafetensorsFile::from_buffer(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), name);
}

// The parse must fail with an Error naming the buffer and containing `what`.
void expect_refused(const std::string& bytes, const std::string& what) {
  try {
    parse(bytes, "bad.safetensors");
    ADD_FAILURE() << "accepted a file that should fail with: " << what;
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("bad.safetensors"), std::string::npos) << msg;
    EXPECT_NE(msg.find(what), std::string::npos) << "expected '" << what << "' in: " << msg;
  }
}

std::string one(const std::string& entry, size_t data_bytes) {
  return test::safetensors_bytes("{\"t\":" + entry + "}", std::string(data_bytes, '\x01'));
}

}  // namespace

TEST(Safetensors, RealShardedCheckpoint) {
  SafetensorsModel m(test::data_path(kRef));
  ASSERT_EQ(m.files().size(), 3u);
  EXPECT_EQ(m.tensors().size(), 75u);  // 8 layers x 9 + embedding + norm + head
  const SafetensorsTensor& e = m.tensor("model.embed_tokens.weight");
  EXPECT_EQ(e.dtype, "BF16");
  ASSERT_TRUE(e.type.has_value());
  EXPECT_EQ(*e.type, DType::BF16);
  EXPECT_EQ(e.shape, (std::vector<int64_t>{50257, 256}));
  EXPECT_EQ(e.ne(), (std::vector<int64_t>{256, 50257}));
  EXPECT_EQ(e.nbytes, size_t(50257) * 256 * 2);
  EXPECT_EQ(fs::path(e.file).filename(), "model-00001-of-00003.safetensors");
  EXPECT_EQ(fs::path(m.tensor("lm_head.weight").file).filename(), "model-00002-of-00003.safetensors");
  const auto& q = m.tensor("model.layers.7.self_attn.k_proj.weight");
  EXPECT_EQ(q.shape, (std::vector<int64_t>{128, 256}));
  EXPECT_EQ(m.files()[0]->metadata().at("format"), "pt");
  // Sorted by name, as the safetensors library lists them.
  for (size_t k = 1; k < m.tensors().size(); ++k) EXPECT_LT(m.tensors()[k - 1]->name, m.tensors()[k]->name);
  EXPECT_THROW(m.tensor("model.layers.8.input_layernorm.weight"), Error);
}

// The norms are F32 in llama.cpp's GGUF, converted exactly from the bf16 checkpoint: the bytes the
// reader points at must decode to the very same floats.
TEST(Safetensors, NormsEqualLlamaCppF32Copies) {
  SafetensorsModel m(test::data_path(kRef));
  GgufFile g(test::data_path(kRef + "/ref-llama-code-Q8_0.gguf"));
  for (int l = 0; l < 8; ++l) {
    const auto& st = m.tensor("model.layers." + std::to_string(l) + ".post_attention_layernorm.weight");
    const auto& gg = g.tensor("blk." + std::to_string(l) + ".ffn_norm.weight");
    ASSERT_EQ(gg.type, DType::F32);
    ASSERT_EQ(st.nelements(), gg.nelements());
    const uint16_t* a = reinterpret_cast<const uint16_t*>(st.data);
    const float* b = reinterpret_cast<const float*>(gg.data);
    for (int64_t i = 0; i < st.nelements(); ++i) ASSERT_EQ(bf16_to_f32(a[i]), b[i]) << l << " " << i;
  }
}

TEST(Safetensors, SingleFileAndWeightTypes) {
  const std::string dir = test::temp_dir() + "/single";
  fs::create_directories(dir);
  const std::string f32 = std::string("\x00\x00\x80\x3f\x00\x00\x00\x40", 8);  // 1.0f, 2.0f
  const std::string i64(16, '\x02');
  test::write_file(dir + "/model.safetensors",
                   test::safetensors_bytes({{"w", "F32", {2}, f32}, {"ids", "I64", {2}, i64},
                                            {"flags", "BOOL", {3}, std::string(3, '\x01')}}));
  SafetensorsModel m(dir);
  ASSERT_EQ(m.tensors().size(), 3u);
  const auto& w = m.tensor("w");
  EXPECT_EQ(w.weight_type(), DType::F32);
  EXPECT_EQ(reinterpret_cast<const float*>(w.data)[1], 2.0f);
  EXPECT_EQ(*m.tensor("ids").type, DType::I64);
  EXPECT_FALSE(m.tensor("flags").type.has_value());  // loads, but has no DType
  try {
    m.tensor("ids").weight_type();
    FAIL() << "I64 accepted as a weight";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("dtype I64, which cannot be used as a weight"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("model.safetensors"), std::string::npos) << e.what();
  }
  EXPECT_THROW(m.tensor("flags").weight_type(), Error);
  // The same file opened by its path.
  SafetensorsModel single(dir + "/model.safetensors");
  EXPECT_EQ(single.tensors().size(), 3u);
}

TEST(Safetensors, EmptyTensorAndMetadata) {
  auto f = parse(test::safetensors_bytes(
      "{\"__metadata__\":{\"a\":\"b\"},\"e\":{\"dtype\":\"F16\",\"shape\":[0,4],\"data_offsets\":[0,0]},"
      "\"x\":{\"dtype\":\"F16\",\"shape\":[],\"data_offsets\":[0,2]}}   ",
      std::string(2, '\0')));
  EXPECT_EQ(f->metadata().at("a"), "b");
  EXPECT_EQ(f->find("e")->nbytes, 0u);
  EXPECT_EQ(f->find("x")->nelements(), 1);  // a scalar
}

TEST(Safetensors, RefusesMalformedHeaders) {
  expect_refused(std::string("\x05\x00\x00", 3), "truncated");
  expect_refused(test::safetensors_bytes("{}", "").substr(0, 9), "past the end");
  {
    std::string b = test::safetensors_bytes("{}", "");
    b[7] = '\x7f';  // header length 2^62-ish
    expect_refused(b, "absurd");
  }
  expect_refused(test::safetensors_bytes("{\"t\": [1,", ""), "invalid JSON");
  expect_refused(test::safetensors_bytes("[1, 2]", ""), "not an object");
  expect_refused(test::safetensors_bytes(
                     "{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                     "\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                     std::string(8, '\0')),
                 "key 't' twice");
  expect_refused(one("{\"shape\":[1],\"data_offsets\":[0,4]}", 4), "'dtype'");
  expect_refused(one("{\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]}", 4), "unknown dtype 'F33'");
  expect_refused(one("{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}", 4), "non-negative integer");
  expect_refused(one("{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}", 4), "non-negative integer");
  expect_refused(one("{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}", 4), "absurd shape");
  expect_refused(one("{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}", 4), "dimensions");
  expect_refused(one("{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}", 4), "out of order");
  expect_refused(one("{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}", 4), "two non-negative integers");
  expect_refused(one("{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", 4), "past the end of the data");
  expect_refused(one("{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}", 8), "needs 12 bytes");
  expect_refused(one("[1]", 0), "not an object");
  expect_refused(test::safetensors_bytes(
                     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                     "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                     std::string(12, '\0')),
                 "overlap");
  expect_refused(test::safetensors_bytes("{\"__metadata__\":{\"k\":3}}", ""), "not a string");
}

// Every prefix of a real shard's header region is refused cleanly (no crash, an Error).
TEST(Safetensors, TruncatedRealShard) {
  const std::string real = test::read_file(test::data_path(kRef + "/model-00003-of-00003.safetensors"));
  ASSERT_GT(real.size(), 8000u);
  for (size_t n : {size_t(0), size_t(4), size_t(8), size_t(100), size_t(7887), real.size() - 1}) {
    EXPECT_THROW(parse(real.substr(0, n)), Error) << n;
  }
  EXPECT_NO_THROW(parse(real));
}

// Random byte mutations of a real header: every result parses or is refused with an Error (run
// under PRIMAL_SANITIZE this also checks that nothing reads out of bounds); what parses keeps
// every tensor inside the buffer.
TEST(Safetensors, MutatedRealHeaders) {
  std::string m = test::read_file(test::data_path(kRef + "/model-00003-of-00003.safetensors"));
  const size_t header_end = 8 + 7880;
  uint32_t s = 12345;
  auto next = [&s] { return s = s * 1664525u + 1013904223u; };
  int refused = 0, parsed = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    const std::string saved = m.substr(0, header_end);  // mutate in place, restore after
    const int flips = 1 + int(next() % 3);
    for (int k = 0; k < flips; ++k) {
      const size_t at = next() % header_end;
      // Mostly JSON-ish characters, so that many mutants still parse as JSON.
      static const char kChars[] = "0123456789[]{},:\"-eE. ";
      m[at] = (next() % 4) ? kChars[next() % (sizeof kChars - 1)] : char(next() & 0xff);
    }
    try {
      auto f = parse(m);
      ++parsed;
      for (const auto& t : f->tensors()) {
        ASSERT_GE(t.data, reinterpret_cast<const uint8_t*>(m.data()) + f->data_offset());
        ASSERT_LE(t.data + t.nbytes, reinterpret_cast<const uint8_t*>(m.data()) + m.size());
      }
    } catch (const Error&) {
      ++refused;
    }
    m.replace(0, header_end, saved);
  }
  EXPECT_GT(refused, 1000);  // most mutants are invalid ...
  EXPECT_GT(parsed, 10);     // ... and some (digits changed inside names, spaces) still parse
}

TEST(Safetensors, ShardedIndexValidation) {
  const std::string base = test::temp_dir() + "/shards";
  auto shard = [](const std::string& name) {
    return test::safetensors_bytes({{name, "F32", {1}, std::string(4, '\0')}});
  };
  auto make = [&](const std::string& dir, const std::string& index) {
    fs::create_directories(dir);
    test::write_file(dir + "/a.safetensors", shard("x"));
    test::write_file(dir + "/b.safetensors", shard("y"));
    test::write_file(dir + "/model.safetensors.index.json", index);
  };
  auto refused = [](const std::string& dir, const std::string& what) {
    try {
      SafetensorsModel m(dir);
      ADD_FAILURE() << "accepted " << dir;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  make(base + "/ok", R"({"metadata":{},"weight_map":{"x":"a.safetensors","y":"b.safetensors"}})");
  SafetensorsModel ok(base + "/ok");
  EXPECT_EQ(ok.tensors().size(), 2u);

  make(base + "/missing_file", R"({"weight_map":{"x":"a.safetensors","y":"c.safetensors"}})");
  refused(base + "/missing_file", "c.safetensors");
  make(base + "/wrong_shard", R"({"weight_map":{"x":"b.safetensors","y":"b.safetensors"}})");
  refused(base + "/wrong_shard", "'x' is listed in b.safetensors but that shard does not hold it");
  make(base + "/unlisted", R"({"weight_map":{"x":"a.safetensors"}})");
  test::write_file(base + "/unlisted/a.safetensors",
                   test::safetensors_bytes({{"x", "F32", {1}, std::string(4, '\0')}, {"w", "F32", {1}, std::string(4, '\0')}}));
  refused(base + "/unlisted", "'w' of");
  make(base + "/escape", R"({"weight_map":{"x":"../ok/a.safetensors"}})");
  refused(base + "/escape", "not a plain file name");
  make(base + "/badjson", R"({"weight_map":)");
  refused(base + "/badjson", "invalid JSON");
  make(base + "/nomap", R"({"metadata":{}})");
  refused(base + "/nomap", "weight_map");
  make(base + "/phantom", R"({"weight_map":{"x":"a.safetensors","y":"b.safetensors","z":"b.safetensors"}})");
  refused(base + "/phantom", "'z' is listed in b.safetensors");

  // The same tensor in two shards (no index: every *.safetensors file is a shard).
  fs::create_directories(base + "/dup");
  test::write_file(base + "/dup/m1.safetensors", shard("x"));
  test::write_file(base + "/dup/m2.safetensors", shard("x"));
  refused(base + "/dup", "appears in both");
  fs::create_directories(base + "/empty");
  refused(base + "/empty", "no model.safetensors.index.json");
}
