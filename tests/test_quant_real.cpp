// The block formats on real files: the reference model as llama.cpp converted and quantized it
// (ref-llama-code-Q8_0.gguf, ref-llama-code-Q4_K_M.gguf) and as HF saved it (bf16 safetensors).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/half.h"
#include "core/mapped_file.h"
#include "io/gguf.h"
#include "quant/dequant.h"
#include "testing.h"

using namespace primal;

namespace {

const char* kQ8 = "models/ref-llama-code/ref-llama-code-Q8_0.gguf";
const char* kQ4KM = "models/ref-llama-code/ref-llama-code-Q4_K_M.gguf";

TensorRef view(const GgufTensorInfo& t) {
  TensorRef r;
  r.name = t.name;
  r.type = t.type;
  r.ne = t.ne;
  r.data = t.data;
  r.nbytes = t.nbytes;
  return r;
}

std::vector<float> dequant_all(const GgufTensorInfo& t) {
  std::vector<float> out(size_t(t.nelements()));
  dequantize_tensor(view(t), out.data());
  return out;
}

// Just enough of the safetensors format for this test (the model loader is io/'s business):
// u64 little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, the data.
class HfCheckpoint {
 public:
  explicit HfCheckpoint(const std::string& dir) {
    std::ifstream in(dir + "/model.safetensors.index.json");
    const auto index = nlohmann::json::parse(in);
    std::map<std::string, const MappedFile*> shards;
    for (const auto& [name, file] : index.at("weight_map").items()) {
      const std::string f = file.get<std::string>();
      if (!shards.count(f)) {
        files_.push_back(std::make_unique<MappedFile>(dir + "/" + f));
        shards[f] = files_.back().get();
        parse(*files_.back());
      }
    }
  }
  // bf16 tensor `name` as fp32 (exact), shape as stored (rows x cols, row-major).
  std::vector<float> f32(const std::string& name) const {
    const auto& t = tensors_.at(name);
    EXPECT_EQ(t.dtype, "BF16") << name;
    std::vector<float> out(t.nbytes / 2);
    for (size_t i = 0; i < out.size(); ++i) {
      uint16_t h;
      std::memcpy(&h, t.data + 2 * i, 2);
      out[i] = bf16_to_f32(h);
    }
    return out;
  }

 private:
  struct Tensor {
    std::string dtype;
    const uint8_t* data;
    size_t nbytes;
  };
  void parse(const MappedFile& m) {
    uint64_t n;
    std::memcpy(&n, m.data(), 8);
    const auto header = nlohmann::json::parse(m.data() + 8, m.data() + 8 + n);
    for (const auto& [name, v] : header.items()) {
      if (name == "__metadata__") continue;
      const auto off = v.at("data_offsets");
      const size_t b = off[0].get<size_t>(), e = off[1].get<size_t>();
      tensors_[name] = {v.at("dtype").get<std::string>(), m.data() + 8 + n + b, e - b};
    }
  }
  std::vector<std::unique_ptr<MappedFile>> files_;
  std::map<std::string, Tensor> tensors_;
};

// The HF name of a GGUF tensor, and the number of heads whose rows llama.cpp's converter permuted
// (0: none).
std::string hf_name(const std::string& g, int* permute_heads) {
  *permute_heads = 0;
  if (g == "token_embd.weight") return "model.embed_tokens.weight";
  if (g == "output.weight") return "lm_head.weight";
  if (g == "output_norm.weight") return "model.norm.weight";
  const size_t dot = g.find('.', 4);
  const std::string layer = g.substr(4, dot - 4), rest = g.substr(dot + 1);
  const std::string p = "model.layers." + layer + ".";
  if (rest == "attn_q.weight") return *permute_heads = 8, p + "self_attn.q_proj.weight";
  if (rest == "attn_k.weight") return *permute_heads = 4, p + "self_attn.k_proj.weight";
  if (rest == "attn_v.weight") return p + "self_attn.v_proj.weight";
  if (rest == "attn_output.weight") return p + "self_attn.o_proj.weight";
  if (rest == "ffn_gate.weight") return p + "mlp.gate_proj.weight";
  if (rest == "ffn_up.weight") return p + "mlp.up_proj.weight";
  if (rest == "ffn_down.weight") return p + "mlp.down_proj.weight";
  if (rest == "attn_norm.weight") return p + "input_layernorm.weight";
  if (rest == "ffn_norm.weight") return p + "post_attention_layernorm.weight";
  ADD_FAILURE() << "unmapped tensor " << g;
  return "";
}

// convert_hf_to_gguf.py's Q/K permutation for llama.cpp's RoPE layout: within each head of
// `hd` rows, row 2i + s of the output is row s*hd/2 + i of the input.
std::vector<float> permute_rows(const std::vector<float>& w, int n_head, int64_t cols) {
  const int64_t rows = int64_t(w.size()) / cols, hd = rows / n_head;
  std::vector<float> out(w.size());
  for (int64_t h = 0; h < n_head; ++h)
    for (int64_t i = 0; i < hd / 2; ++i)
      for (int64_t s = 0; s < 2; ++s)
        std::memcpy(&out[size_t((h * hd + 2 * i + s) * cols)], &w[size_t((h * hd + s * hd / 2 + i) * cols)],
                    sizeof(float) * size_t(cols));
  return out;
}

}  // namespace

// Q8_0 and F32 tensors of the Q4_K_M file were made from the same F16 conversion by the same
// quantizer as those of the Q8_0 file, so they must be the same bytes.
TEST(QuantRealModel, SameTypeTensorsAreByteIdenticalAcrossFiles) {
  GgufFile q8(test::data_path(kQ8)), q4(test::data_path(kQ4KM));
  int same_type = 0;
  for (const auto& t : q4.tensors()) {
    const auto& r = q8.tensor(t.name);
    if (t.type != r.type) continue;
    ++same_type;
    ASSERT_EQ(t.nbytes, r.nbytes) << t.name;
    EXPECT_EQ(std::memcmp(t.data, r.data, t.nbytes), 0) << t.name;
  }
  EXPECT_EQ(same_type, 17 + 4);  // 17 norms (F32) and ffn_down of layers 0, 3, 6, 7 (Q8_0)
}

// Every tensor of the Q4_K_M file decodes close to the same tensor of the Q8_0 file. Both are
// quantizations of the same weights W. For a round-to-nearest grid of step D the error is at
// most D/2 per weight, and about D/sqrt(12) in RMS when the weight falls anywhere within a step.
// With D from each block of the Q8_0 weights (a close stand-in for W) for each format:
//   Q8_0: amax/127 (blocks of 32)      Q5_0: amax/16 (blocks of 32)
//   Q6_K: amax/32  (sub-blocks of 16)  Q4_K: (max - min(min, 0))/15 (sub-blocks of 32)
// the two errors are independent, so RMS(W4 - W8) ~ sqrt(mean(D4^2 + D8^2) / 12). We allow
// 1.3x that for the departures from the model (the K-quant scale search trades a few clipped
// weights for a finer step; the scales themselves are quantized to 6 bits).
TEST(QuantRealModel, Q4KMTensorsCloseToQ8_0) {
  GgufFile q8(test::data_path(kQ8)), q4(test::data_path(kQ4KM));
  std::map<DType, int> count;  // quantized tensors checked, per type
  for (const auto& t : q4.tensors()) {
    const auto& r = q8.tensor(t.name);
    ASSERT_EQ(t.ne, r.ne) << t.name;
    const std::vector<float> a = dequant_all(t), b = dequant_all(r);
    if (t.type == DType::F32 || t.type == DType::Q8_0) {
      EXPECT_EQ(a, b) << t.name;
      continue;
    }
    const int group = t.type == DType::Q6_K ? 16 : 32;
    const double step_div = t.type == DType::Q4_K ? 15 : t.type == DType::Q5_0 ? 16 : 32;
    double err2 = 0, ref2 = 0, pred2 = 0;
    for (size_t g0 = 0; g0 < b.size(); g0 += size_t(group)) {
      float mn = 0, mx = b[g0], amax = 0;
      for (int i = 0; i < group; ++i) {
        const float v = b[g0 + size_t(i)];
        mn = std::min(mn, v);
        mx = std::max(mx, v);
        amax = std::max(amax, std::fabs(v));
      }
      const double d = t.type == DType::Q4_K ? (mx - mn) / step_div : amax / step_div;
      // Q8_0's own step: its block of 32 holds this group (16 or 32 wide).
      float amax8 = 0;
      const size_t b0 = g0 / 32 * 32;
      for (size_t i = b0; i < b0 + 32; ++i) amax8 = std::max(amax8, std::fabs(b[i]));
      const double d8 = amax8 / 127.0;
      for (int i = 0; i < group; ++i) {
        const double e = double(a[g0 + size_t(i)]) - double(b[g0 + size_t(i)]);
        err2 += e * e;
        ref2 += double(b[g0 + size_t(i)]) * b[g0 + size_t(i)];
        pred2 += (d * d + d8 * d8) / 12.0;
      }
    }
    const double ratio = std::sqrt(err2 / pred2);
    EXPECT_LE(ratio, 1.3) << t.name << " (" << dtype_name(t.type) << "): RMS error " << std::sqrt(err2 / double(b.size()))
                          << ", predicted " << std::sqrt(pred2 / double(b.size()));
    EXPECT_GT(ratio, 0.3) << t.name << ": suspiciously small error for " << dtype_name(t.type);
    ++count[t.type];
    RecordProperty(t.name + ".rel_rms", std::to_string(std::sqrt(err2 / ref2)));
    std::printf("%-28s %-5s rel RMS %.4f  measured/predicted %.3f\n", t.name.c_str(), dtype_name(t.type).c_str(),
                std::sqrt(err2 / ref2), ratio);
  }
  // Q4_K_M's mix: token_embd, q, k, output, gate, up and half the attn_v in Q4_K; output.weight
  // and attn_v of layers 0, 3, 6, 7 in Q6_K; ffn_down of layers 1, 2, 4, 5 in Q5_0 (704 columns
  // are not a multiple of 256), of the others in Q8_0.
  EXPECT_EQ(count[DType::Q4_K], 1 + 8 * 5 + 4);
  EXPECT_EQ(count[DType::Q6_K], 1 + 4);
  EXPECT_EQ(count[DType::Q5_0], 4);
}

// Re-quantizing the Q8_0 file's decoded weights reproduces its blocks: the decoded block has
// amax = 127*d exactly, so the new scale is d again and every code rounds back to itself.
TEST(QuantRealModel, Q8_0RequantizeReproducesFile) {
  GgufFile q8(test::data_path(kQ8));
  int n = 0;
  for (const auto& t : q8.tensors()) {
    if (t.type != DType::Q8_0) continue;
    ++n;
    const std::vector<float> w = dequant_all(t);
    std::vector<uint8_t> out(t.nbytes);
    ASSERT_EQ(quantize_rows(DType::Q8_0, w.data(), out.data(), t.nrows(), t.row_size()), t.nbytes);
    EXPECT_EQ(std::memcmp(out.data(), t.data, t.nbytes), 0) << t.name;
  }
  EXPECT_EQ(n, 58);
}

// The strongest check of the quantizers: from the HF bf16 weights, redo what llama.cpp did
// (bf16 -> f32 -> f16 in convert_hf_to_gguf.py, with its Q/K row permutation; f16 -> f32 and
// the reference quantizer in llama-quantize) and compare every block with the files' bytes.
// Covers Q8_0, Q4_K, Q5_0 and Q6_K, plus the F32 norms.
TEST(QuantRealModel, QuantizersReproduceLlamaQuantizeBytes) {
  HfCheckpoint hf(test::data_path("models/ref-llama-code"));
  for (const char* file : {kQ8, kQ4KM}) {
    GgufFile g(test::data_path(file));
    std::map<DType, int> checked;
    for (const auto& t : g.tensors()) {
      int heads = 0;
      std::vector<float> w = hf.f32(hf_name(t.name, &heads));
      ASSERT_EQ(int64_t(w.size()), t.nelements()) << t.name;
      if (heads) w = permute_rows(w, heads, t.row_size());
      if (t.type != DType::F32)
        for (float& v : w) v = f16_to_f32(f32_to_f16(v));  // the F16 GGUF in between
      std::vector<uint8_t> out(t.nbytes);
      ASSERT_EQ(quantize_rows(t.type, w.data(), out.data(), t.nrows(), t.row_size()), t.nbytes) << t.name;
      // Count differing blocks, to make a failure readable.
      const auto& tr = traits(t.type);
      int64_t bad = 0;
      for (size_t o = 0; o < t.nbytes; o += tr.block_bytes) bad += std::memcmp(&out[o], t.data + o, tr.block_bytes) != 0;
      EXPECT_EQ(bad, 0) << file << ": " << t.name << " (" << dtype_name(t.type) << "): " << bad << " of "
                        << t.nbytes / tr.block_bytes << " blocks differ";
      ++checked[t.type];
    }
    if (std::string(file) == kQ4KM) {
      EXPECT_EQ(checked[DType::Q4_K], 45);
      EXPECT_EQ(checked[DType::Q6_K], 5);
      EXPECT_EQ(checked[DType::Q5_0], 4);
      EXPECT_EQ(checked[DType::Q8_0], 4);
    } else {
      EXPECT_EQ(checked[DType::Q8_0], 58);
    }
    EXPECT_EQ(checked[DType::F32], 17);
  }
}
