// primal's HF -> GGUF converter against llama.cpp's own conversion of the same checkpoint
// (ref-llama-code-Q8_0.gguf: convert_hf_to_gguf.py to F16, then llama-quantize to Q8_0).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <numbers>
#include <set>

#include "core/error.h"
#include "core/half.h"
#include "hf_fixture.h"
#include "io/convert.h"
#include "io/gguf.h"
#include "io/model_source.h"
#include "quant/blocks.h"
#include "quant/dequant.h"
#include "testing.h"

using namespace primal;
namespace fs = std::filesystem;

namespace {

const std::string kRef = "models/ref-llama-code";

void expect_same(const GgufValue& a, const GgufValue& b, const std::string& key) {
  ASSERT_EQ(a.type, b.type) << key;
  switch (a.type) {
    case GgufType::STRING: ASSERT_EQ(a.str, b.str) << key; break;
    case GgufType::FLOAT32: case GgufType::FLOAT64: ASSERT_EQ(a.f, b.f) << key; break;
    case GgufType::ARRAY:
      ASSERT_EQ(a.elem, b.elem) << key;
      ASSERT_EQ(a.arr.size(), b.arr.size()) << key;
      for (size_t k = 0; k < a.arr.size(); ++k) expect_same(a.arr[k], b.arr[k], key + "[" + std::to_string(k) + "]");
      break;
    default:  // integers and bools: both fields (u64 values do not fit as_int)
      ASSERT_EQ(a.u, b.u) << key;
      ASSERT_EQ(a.i, b.i) << key;
  }
}

// One conversion of the real model per type, shared by the tests of this program.
const std::string& converted(DType t) {
  static std::map<DType, std::string> done;
  auto it = done.find(t);
  if (it != done.end()) return it->second;
  const std::string out = test::temp_dir() + "/ref-" + dtype_name(t) + ".gguf";
  ConvertOptions o;
  o.type = t;
  convert_hf_to_gguf(test::data_path(kRef), out, o);
  return done[t] = out;
}

// The HF row that GGUF row r of tensor `name` holds (llama.cpp permutes Q and K of llama models).
int64_t source_row(const std::string& name, int64_t r, int64_t rows) {
  if (name.find("attn_q.weight") != std::string::npos) return llama_qk_source_row(r, 8, rows);
  if (name.find("attn_k.weight") != std::string::npos) return llama_qk_source_row(r, 4, rows);
  return r;
}

// Rounding error bound of fp32 -> fp16 round-to-nearest: half an ulp, 2^-11 relative for normal
// results, 2^-25 absolute in the subnormal range (fp16 subnormal spacing 2^-24).
double f16_err(double v) { return std::max(std::ldexp(std::fabs(v), -11), std::ldexp(1.0, -25)); }

}  // namespace

TEST(ConvertHelpers, QkRowPermutation) {
  // One head of 4 rows: HF rows (0, 2 | 1, 3) are the pairs (x_i, x_{i+d/2}) that llama.cpp's
  // RoPE wants adjacent: GGUF rows 0..3 come from HF rows 0, 2, 1, 3.
  EXPECT_EQ(llama_qk_source_row(0, 1, 4), 0);
  EXPECT_EQ(llama_qk_source_row(1, 1, 4), 2);
  EXPECT_EQ(llama_qk_source_row(2, 1, 4), 1);
  EXPECT_EQ(llama_qk_source_row(3, 1, 4), 3);
  // Two heads of 8: row 3 of head 1 (i = 1, j = 1) comes from head 1, row j*4 + i = 5.
  EXPECT_EQ(llama_qk_source_row(8 + 3, 2, 16), 8 + 5);
  // A permutation of every row, for the reference model's K (4 heads of 32 rows).
  std::set<int64_t> seen;
  for (int64_t r = 0; r < 128; ++r) seen.insert(llama_qk_source_row(r, 4, 128));
  EXPECT_EQ(seen.size(), 128u);
  EXPECT_EQ(*seen.rbegin(), 127);
}

TEST(ConvertHelpers, NamesAndSizeLabels) {
  EXPECT_EQ(model_name_from_dir("/a/b/ref-llama-code"), "Ref Llama Code");
  EXPECT_EQ(model_name_from_dir("/a/b/ref-llama-code/"), "Ref Llama Code");
  EXPECT_EQ(model_name_from_dir("tiny-qwen2-v1.5-7b"), "Tiny Qwen2 v1.5 7b");
  EXPECT_EQ(model_name_from_dir("Meta-Llama-3-8B"), "Meta Llama 3 8B");
  EXPECT_EQ(model_name_from_dir("my_model"), "My_Model");
  EXPECT_EQ(size_label(31634176), "32M");
  EXPECT_EQ(size_label(124439808), "124M");
  EXPECT_EQ(size_label(1235814400), "1.2B");
  EXPECT_EQ(size_label(8030261248), "8.0B");
  EXPECT_EQ(size_label(494032768), "494M");
  EXPECT_EQ(size_label(500000), "500K");
  EXPECT_EQ(llama_file_type(DType::F16), 1u);
  EXPECT_EQ(llama_file_type(DType::BF16), 32u);
  EXPECT_EQ(llama_file_type(DType::Q8_0), 7u);
  EXPECT_THROW(llama_file_type(DType::Q4_K), Error);
}

// Same tensor names and shapes, and the same metadata keys and values as llama.cpp's file apart
// from file_type / quantization_version. The one key llama.cpp (build 4748) did not write is the
// rope theta: this transformers-5 config keeps it in rope_parameters, which that converter did
// not read (10000 is also llama.cpp's default, so both files mean the same).
TEST(Convert, MatchesLlamaCppMetadataAndTensors) {
  GgufFile ours(converted(DType::F16));
  GgufFile theirs(test::data_path(kRef + "/ref-llama-code-Q8_0.gguf"));
  for (const auto& [key, v] : theirs.kv()) {
    if (key == "general.file_type" || key == "general.quantization_version") continue;
    const GgufValue* o = ours.find(key);
    ASSERT_NE(o, nullptr) << "missing key " << key;
    expect_same(*o, v, key);
  }
  std::set<std::string> extra;
  for (const auto& [key, v] : ours.kv())
    if (!theirs.has(key)) extra.insert(key);
  EXPECT_EQ(extra, (std::set<std::string>{"llama.rope.freq_base"}));
  EXPECT_EQ(ours.get_float("llama.rope.freq_base"), 10000.0);
  EXPECT_EQ(ours.get_int("general.file_type"), 1);
  EXPECT_EQ(ours.get_int("general.quantization_version"), 2);
  EXPECT_EQ(ours.get_strings("tokenizer.ggml.tokens"), theirs.get_strings("tokenizer.ggml.tokens"));
  EXPECT_EQ(ours.get_strings("tokenizer.ggml.merges").size(), 50000u);
  EXPECT_EQ(ours.get_ints("tokenizer.ggml.token_type"), theirs.get_ints("tokenizer.ggml.token_type"));

  ASSERT_EQ(ours.tensors().size(), theirs.tensors().size());
  for (const auto& t : theirs.tensors()) {
    const GgufTensorInfo* o = ours.find_tensor(t.name);
    ASSERT_NE(o, nullptr) << t.name;
    EXPECT_EQ(o->ne, t.ne) << t.name;
    EXPECT_EQ(o->type, t.ne.size() == 1 ? DType::F32 : DType::F16) << t.name;
    EXPECT_EQ(o->offset % 32, 0u);
    if (t.type == DType::F32) {  // norms: exact bf16 -> f32 in both files
      ASSERT_EQ(o->nbytes, t.nbytes);
      EXPECT_EQ(std::memcmp(o->data, t.data, t.nbytes), 0) << t.name;
    }
  }
  // The converted file opens as a model with the same hyper-parameters (llama layout: rope pairs).
  const auto m = ModelSource::open(converted(DType::F16));
  EXPECT_FALSE(m->hparams().rope_neox);
  EXPECT_EQ(m->hparams().n_head_kv, 4);
  EXPECT_EQ(m->hparams().head_dim, 32);
}

// llama.cpp's Q8_0 weights against the bf16 originals. llama.cpp converted x (bf16) to y = f16(x),
// then per block of 32: d = max|y| / 127 (fp32), q = round(y / d), stored D = f16(d). So
//   |x - q D| <= |x - y| + |y - q d| + |q| |d - D|
//            <= e16(x) + d (1/2 + 2^-14) + 127 e16(d)
// with e16 the fp16 rounding bound (f16_err); 2^-14 d covers the fp32 rounding of y * (1/d) and
// of q * D. The bound is computed from the originals only.
TEST(Convert, LlamaCppQ8_0WithinDerivedBoundOfOriginals) {
  const auto hf = ModelSource::open(test::data_path(kRef));
  GgufFile theirs(test::data_path(kRef + "/ref-llama-code-Q8_0.gguf"));
  double max_err = 0, sum_sq = 0, max_ratio = 0;
  int64_t n = 0, over = 0;
  for (const auto& t : theirs.tensors()) {
    if (t.type != DType::Q8_0) continue;
    const TensorRef& src = hf->tensor(t.name);
    ASSERT_EQ(src.ne, t.ne) << t.name;
    const int64_t cols = t.ne[0], rows = t.nrows();
    std::vector<float> x(size_t(cols), 0.f), q(size_t(cols), 0.f);
    for (int64_t r = 0; r < rows; ++r) {
      dequantize_tensor_row(src, source_row(t.name, r, rows), x.data());
      dequantize_row(DType::Q8_0, t.data + size_t(r) * row_bytes(DType::Q8_0, cols), q.data(), cols);
      for (int64_t b = 0; b < cols; b += 32) {
        float amax = 0;
        for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(f16_to_f32(f32_to_f16(x[size_t(b + j)]))));
        const double d = double(amax / 127.0f);
        for (int j = 0; j < 32; ++j) {
          const double xi = x[size_t(b + j)], err = std::fabs(xi - double(q[size_t(b + j)]));
          const double bound = f16_err(xi) + d * (0.5 + std::ldexp(1.0, -14)) + 127.0 * f16_err(d);
          if (err > bound) ++over;
          max_err = std::max(max_err, err);
          max_ratio = std::max(max_ratio, err / bound);
          sum_sq += err * err;
          ++n;
        }
      }
    }
  }
  const double rms = std::sqrt(sum_sq / double(n));
  std::printf("[ stats    ] llama.cpp Q8_0 vs bf16 originals: %lld weights, max |err| %.3g, rms %.3g, "
              "max err/bound %.4f\n",
              (long long)n, max_err, rms, max_ratio);
  RecordProperty("q8_0_max_abs_err", std::to_string(max_err));
  RecordProperty("q8_0_rms_err", std::to_string(rms));
  EXPECT_EQ(n, 31634176 - 8 * 2 * 256 - 256);  // every weight but the norms
  EXPECT_EQ(over, 0);
  EXPECT_GT(max_err, 0.0);
  EXPECT_GT(max_ratio, 0.5);  // the bound is tight, not vacuous
}

// The strong identity: our F16 conversion, quantized row by row with quantize_row(Q8_0), gives
// llama.cpp's Q8_0 bytes (its llama-quantize ran the same reference quantizer on its F16 file).
TEST(Convert, F16ThenQ8_0ReproducesLlamaCppBytes) {
  GgufFile ours(converted(DType::F16));
  GgufFile theirs(test::data_path(kRef + "/ref-llama-code-Q8_0.gguf"));
  int64_t blocks = 0, same = 0;
  for (const auto& t : theirs.tensors()) {
    if (t.type != DType::Q8_0) continue;
    const GgufTensorInfo& o = ours.tensor(t.name);
    ASSERT_EQ(o.type, DType::F16);
    const int64_t cols = t.ne[0], rows = t.nrows();
    const size_t qrow = row_bytes(DType::Q8_0, cols), frow = row_bytes(DType::F16, cols);
    std::vector<float> x(size_t(cols), 0.f);
    std::vector<uint8_t> mine(qrow);
    for (int64_t r = 0; r < rows; ++r) {
      dequantize_row(DType::F16, o.data + size_t(r) * frow, x.data(), cols);
      quantize_row(DType::Q8_0, x.data(), mine.data(), cols);
      const uint8_t* ref = t.data + size_t(r) * qrow;
      for (int64_t b = 0; b < cols / 32; ++b, ++blocks)
        same += std::memcmp(mine.data() + b * sizeof(BlockQ8_0), ref + b * sizeof(BlockQ8_0), sizeof(BlockQ8_0)) == 0;
    }
  }
  std::printf("[ stats    ] F16 -> Q8_0 blocks identical to llama.cpp's: %lld of %lld (%.6f%%)\n", (long long)same,
              (long long)blocks, 100.0 * double(same) / double(blocks));
  EXPECT_EQ(blocks, (31634176 - 8 * 2 * 256 - 256) / 32);
  EXPECT_EQ(same, blocks);
}

// Other output types: bf16 keeps the original bits (Q/K rows permuted), f32 widens them exactly,
// q8_0 quantizes the 2-D weights directly from the originals (as convert_hf_to_gguf --outtype q8_0).
TEST(Convert, OtherOutputTypes) {
  const auto hf = ModelSource::open(test::data_path(kRef));
  GgufFile bf(converted(DType::BF16));
  EXPECT_EQ(bf.get_int("general.file_type"), 32);
  for (const char* name : {"blk.2.attn_v.weight", "blk.2.attn_q.weight", "blk.5.attn_k.weight", "output.weight"}) {
    const auto& g = bf.tensor(name);
    const TensorRef& s = hf->tensor(name);
    ASSERT_EQ(g.type, DType::BF16);
    const int64_t rows = g.nrows();
    for (int64_t r = 0; r < rows; ++r)
      ASSERT_EQ(std::memcmp(g.data + size_t(r) * s.row_stride(), s.row(source_row(name, r, rows)), s.row_stride()), 0)
          << name << " row " << r;
  }
  GgufFile f32(converted(DType::F32));
  EXPECT_EQ(f32.get_int("general.file_type"), 0);
  const auto& e = f32.tensor("token_embd.weight");
  ASSERT_EQ(e.type, DType::F32);
  const uint16_t* src = reinterpret_cast<const uint16_t*>(hf->tensor("token_embd.weight").data);
  for (int64_t i = 0; i < e.nelements(); i += 997) ASSERT_EQ(reinterpret_cast<const float*>(e.data)[i], bf16_to_f32(src[i]));

  GgufFile q8(converted(DType::Q8_0));
  EXPECT_EQ(q8.get_int("general.file_type"), 7);
  EXPECT_EQ(q8.tensor("blk.0.ffn_down.weight").type, DType::Q8_0);
  EXPECT_EQ(q8.tensor("blk.0.ffn_norm.weight").type, DType::F32);
  // Row 17 of ffn_up: our Q8_0 of the bf16 values, block by block.
  const auto& up = q8.tensor("blk.3.ffn_up.weight");
  std::vector<float> x(256);
  std::vector<uint8_t> want(row_bytes(DType::Q8_0, 256));
  dequantize_tensor_row(hf->tensor("blk.3.ffn_up.weight"), 17, x.data());
  quantize_row(DType::Q8_0, x.data(), want.data(), 256);
  EXPECT_EQ(std::memcmp(up.data + 17 * want.size(), want.data(), want.size()), 0);
}

// Unsupported models and tokenizers are refused before the output file is created.
TEST(Convert, RefusesBeforeWriting) {
  const std::string base = test::temp_dir() + "/refuse";
  fs::create_directories(base + "/gpt2");
  for (const char* f : {"model.safetensors.index.json", "model-00001-of-00003.safetensors",
                        "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors", "tokenizer.json"})
    fs::create_symlink(test::data_path(kRef + "/" + f), base + "/gpt2/" + f);
  std::string cfg = test::read_file(test::data_path(kRef + "/config.json"));
  cfg.replace(cfg.find("\"model_type\": \"llama\""), 21, "\"model_type\": \"gpt2\" ");
  test::write_file(base + "/gpt2/config.json", cfg);
  const std::string out = base + "/out.gguf";
  try {
    convert_hf_to_gguf(base + "/gpt2", out, {});
    FAIL() << "converted a gpt2 model";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model_type 'gpt2'"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(out));

  test::TinyModel tm;
  tm.pre_regex = "\\\\s+|\\\\w+";  // a Split regex primal does not know
  test::write_tiny_model(base + "/odd_pre", tm);
  try {
    convert_hf_to_gguf(base + "/odd_pre", out, {});
    FAIL() << "converted an unknown pre-tokenizer";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--pre"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("tokenizer.json"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(out));
  ConvertOptions o;
  o.pre = "gpt-2";  // named by the user: accepted as given
  convert_hf_to_gguf(base + "/odd_pre", out, o);
  EXPECT_EQ(GgufFile(out).get_str("tokenizer.ggml.pre"), "gpt-2");

  // A field of the wrong JSON type is an Error naming the folder, not a raw JSON exception.
  test::TinyModel plain;
  test::write_tiny_model(base + "/odd_type", plain);
  std::string tj = test::read_file(base + "/odd_type/tokenizer.json");
  tj.replace(tj.find("\"use_regex\":true"), 16, "\"use_regex\":\"yes\"");
  test::write_file(base + "/odd_type/tokenizer.json", tj);
  try {
    convert_hf_to_gguf(base + "/odd_type", base + "/odd.gguf", {});
    FAIL() << "accepted use_regex: \"yes\"";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(base + "/odd_type"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(base + "/odd.gguf"));

  o.type = DType::Q4_K;
  EXPECT_THROW(convert_hf_to_gguf(base + "/odd_pre", base + "/q4k.gguf", o), Error);
  EXPECT_FALSE(fs::exists(base + "/q4k.gguf"));
}

// qwen2: no Q/K permutation, biases kept F32, tied head, yarn keys, qwen2 pre-tokenizer, and the
// tokenizer metadata of a hand-made tokenizer.json (added tokens, padding, merges, flags, template).
TEST(Convert, TinyQwen2) {
  const std::string dir = test::temp_dir() + "/tiny-qwen2";
  test::TinyModel tm;
  tm.model_type = "qwen2";
  tm.tied = true;
  tm.rope_json = R"(,"rope_scaling":{"type":"yarn","factor":4.0,"original_max_position_embeddings":64})";
  tm.pre_regex =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+)";
  test::write_tiny_model(dir, tm);
  const std::string out = test::temp_dir() + "/tiny-qwen2.gguf";
  std::vector<std::string> lines;
  ConvertOptions o;
  o.log = [&](const std::string& s) { lines.push_back(s); };
  convert_hf_to_gguf(dir, out, o);
  EXPECT_GE(lines.size(), 24u);  // a header, a plan line, one line per tensor

  GgufFile g(out);
  EXPECT_EQ(g.get_str("general.architecture"), "qwen2");
  EXPECT_EQ(g.get_str("general.name"), "Tiny Qwen2");
  EXPECT_EQ(g.get_str("tokenizer.ggml.pre"), "qwen2");
  EXPECT_EQ(g.get_str("qwen2.rope.scaling.type"), "yarn");
  EXPECT_EQ(g.get_float("qwen2.rope.scaling.factor"), 4.0);
  EXPECT_EQ(g.get_int("qwen2.rope.scaling.original_context_length"), 64);
  EXPECT_EQ(g.get_float("qwen2.rope.freq_base"), 500000.0);
  EXPECT_EQ(g.get_float("qwen2.attention.layer_norm_rms_epsilon"), double(1e-6f));
  EXPECT_FALSE(g.has("qwen2.attention.key_length"));  // no head_dim in config.json, as llama.cpp
  EXPECT_EQ(g.find_tensor("output.weight"), nullptr);
  EXPECT_EQ(g.tensors().size(), 1u + 2 * 12 + 1);

  const auto hf = ModelSource::open(dir);
  // No permutation: each F16 row is the f16 of the same bf16 row.
  const auto& q = g.tensor("blk.1.attn_q.weight");
  ASSERT_EQ(q.type, DType::F16);
  std::vector<float> x(64), y(64);
  for (int64_t r = 0; r < 64; ++r) {
    dequantize_tensor_row(hf->tensor("blk.1.attn_q.weight"), r, x.data());
    dequantize_row(DType::F16, q.data + size_t(r) * 128, y.data(), 64);
    for (int i = 0; i < 64; ++i) ASSERT_EQ(y[size_t(i)], f16_to_f32(f32_to_f16(x[size_t(i)]))) << r << " " << i;
  }
  const auto& kb = g.tensor("blk.0.attn_k.bias");
  ASSERT_EQ(kb.type, DType::F32);
  ASSERT_EQ(kb.ne, (std::vector<int64_t>{32}));
  dequantize_tensor_row(hf->tensor("blk.0.attn_k.bias"), 0, x.data());
  for (int i = 0; i < 32; ++i) EXPECT_EQ(reinterpret_cast<const float*>(kb.data)[i], x[size_t(i)]);

  const auto tokens = g.get_strings("tokenizer.ggml.tokens");
  const auto types = g.get_ints("tokenizer.ggml.token_type");
  ASSERT_EQ(tokens.size(), 16u);
  EXPECT_EQ(tokens[5], "ab");
  EXPECT_EQ(tokens[7], "\xc4\xa0" "a");
  EXPECT_EQ(tokens[13], "[PAD13]");
  EXPECT_EQ(tokens[15], "<|end|>");
  EXPECT_EQ(types, (std::vector<int64_t>{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 5, 3, 3}));
  EXPECT_EQ(g.get_strings("tokenizer.ggml.merges"),
            (std::vector<std::string>{"a b", "c d", "\xc4\xa0 a", "ab cd"}));
  EXPECT_EQ(g.get_int("tokenizer.ggml.bos_token_id"), 14);
  EXPECT_EQ(g.get_int("tokenizer.ggml.eos_token_id"), 15);
  EXPECT_TRUE(g.get_bool("tokenizer.ggml.add_bos_token", false));
  EXPECT_FALSE(g.has("tokenizer.ggml.add_eos_token"));
  EXPECT_EQ(g.get_str("tokenizer.chat_template"), "{% for m in messages %}{{ m.content }}{% endfor %}");
}

// llama3 rope scaling: rope_freqs.weight holds the per-frequency factors, first, as llama.cpp
// writes it. Here head_dim 16, theta 500000, original context 64: wavelengths 2 pi theta^(k/8)
// are 6.3 (< 64/4: kept, factor 1), 32.4 (between: smoothed), and >= 167 (> 64: factor 8).
TEST(Convert, TinyLlama3RopeFreqs) {
  const std::string dir = test::temp_dir() + "/tiny-llama3";
  test::TinyModel tm;
  tm.rope_json = R"(,"rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,)"
                 R"("high_freq_factor":4.0,"original_max_position_embeddings":64})";
  tm.pre_regex =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+)";
  test::write_tiny_model(dir, tm);
  const std::string out = test::temp_dir() + "/tiny-llama3.gguf";
  convert_hf_to_gguf(dir, out, {});
  GgufFile g(out);
  EXPECT_EQ(g.get_str("tokenizer.ggml.pre"), "llama-bpe");
  EXPECT_FALSE(g.has("llama.rope.scaling.type"));  // llama.cpp reads llama3 scaling from the tensor
  ASSERT_EQ(g.tensors()[0].name, "rope_freqs.weight");
  const auto& rf = g.tensors()[0];
  ASSERT_EQ(rf.type, DType::F32);
  ASSERT_EQ(rf.ne, (std::vector<int64_t>{8}));
  const float* f = reinterpret_cast<const float*>(rf.data);
  EXPECT_EQ(f[0], 1.0f);
  // k = 1: wavelength 2 pi 500000^(1/8); smooth = (64 / wavelength - 1) / 3; 1 / ((1 - s)/8 + s).
  const double wl = 2 * std::numbers::pi * std::pow(500000.0, 1.0 / 8), s = (64 / wl - 1) / 3;
  EXPECT_NEAR(f[1], 1 / ((1 - s) / 8 + s), 1e-5);
  EXPECT_GT(f[1], 2.4f);
  EXPECT_LT(f[1], 2.5f);
  for (int k = 2; k < 8; ++k) EXPECT_EQ(f[k], 8.0f) << k;
  // Q/K of the llama architecture are permuted here too (head_dim 16, 4 and 2 heads).
  const auto hf = ModelSource::open(dir);
  const auto& k = g.tensor("blk.0.attn_k.weight");
  std::vector<float> x(64), y(64);
  for (int64_t r = 0; r < 32; ++r) {
    dequantize_tensor_row(hf->tensor("blk.0.attn_k.weight"), llama_qk_source_row(r, 2, 32), x.data());
    dequantize_row(DType::F16, k.data + size_t(r) * 128, y.data(), 64);
    for (int i = 0; i < 64; ++i) ASSERT_EQ(y[size_t(i)], f16_to_f32(f32_to_f16(x[size_t(i)]))) << r;
  }
}
