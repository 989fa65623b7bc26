// LUT weights in the forward pass: the matmul on a LUT matrix (decode and prefill paths) equals
// the product with its dequantized rows, and a LUT8 model of the real reference checkpoint scores
// a perplexity slice within a fraction of a percent of the float model.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <random>
#include <vector>

#include "infer/loaded_model.h"
#include "infer/perplexity.h"
#include "ops/cpu/matmul.h"
#include "quant/lut_format.h"
#include "quant/lut_grid.h"
#include "quant/lut_model.h"
#include "quant/lut_pack.h"
#include "quant/lut_quantize.h"
#include "testing.h"

using namespace primal;

TEST(LutForward, MatmulEqualsTheDequantizedProduct) {
  const int64_t I = 96, O = 40;
  std::mt19937 rng(11);
  std::normal_distribution<float> d(0, 0.05f);
  std::vector<float> W(size_t(I * O));
  for (auto& w : W) w = d(rng);
  for (DType t : {DType::LUT3, DType::LUT4, DType::LUT8}) {
    const LutMatrix m = lut_quantize_matrix(W.data(), I, O, t, 32, make_grid(GridKind::NF4, lut_entries(t)), nullptr);
    const auto packed = pack_lut_matrix("w", m);
    // T = 1 takes the decode path, T = 2 the row path, T = 9 the dequantized tiles and sgemm.
    for (int64_t T : {1, 2, 9}) {
      std::vector<float> x(size_t(T * I)), bias(static_cast<size_t>(O)), out(size_t(T * O));
      for (auto& v : x) v = d(rng) * 20;
      for (auto& v : bias) v = d(rng);
      cpu::matmul_forward(out.data(), x.data(), packed->ref, bias.data(), T);
      std::vector<float> row(static_cast<size_t>(I));
      for (int64_t o = 0; o < O; ++o) {
        m.dequantize_row(o, row.data());
        for (int64_t k = 0; k < T; ++k) {
          double ref = bias[size_t(o)], mag = std::fabs(bias[size_t(o)]);
          for (int64_t i = 0; i < I; ++i) {
            ref += double(row[size_t(i)]) * x[size_t(k * I + i)];
            mag += std::fabs(double(row[size_t(i)]) * x[size_t(k * I + i)]);
          }
          // fp32 sums of I products: a few ulps of the magnitude.
          ASSERT_NEAR(out[size_t(k * O + o)], ref, 1e-6 * mag + 1e-9) << dtype_name(t) << " T=" << T << " o=" << o;
        }
      }
    }
  }
}

TEST(LutForward, Lut8PerplexityIsCloseToTheFloatModel) {
  // The BF16 checkpoint and its LUT8 (uniform grid, a scale per 32) quantization, on the first
  // windows of the text llama.cpp's figures use. LUT8 with 32-weight groups is Q8_0's precision
  // (llama.cpp: F16 6.4792, Q8_0 6.4844 on the whole file, +0.08%).
  const std::string hf = test::data_path("models/ref-llama-code");
  const std::string lut8 = test::temp_dir() + "/ref-llama-code-lut8.gguf";
  LutQuantOptions o;
  o.type = DType::LUT8;
  o.grid = GridKind::Uniform;
  o.group = 32;
  quantize_model(hf, lut8, o);

  std::ifstream f(test::data_path("text/python-stdlib-valid.txt"), std::ios::binary);
  const std::string text(std::istreambuf_iterator<char>(f), {});
  PerplexityOptions po;
  po.n_ctx = 512;
  po.n_chunks = 3;
  double ppl[2];
  int k = 0;
  for (const std::string& path : {hf, lut8}) {
    LoadedModel lm = LoadedModel::open(path);
    std::vector<int32_t> tokens = lm.tokenizer->encode(text.substr(0, 20000), false, false);
    // As `primal ppl` (llama.cpp) does: BOS first and at each window start when the vocabulary adds it.
    po.bos_id = lm.tokenizer->add_bos() ? lm.tokenizer->bos_id() : -1;
    if (po.bos_id >= 0) tokens.insert(tokens.begin(), po.bos_id);
    const PerplexityResult r = perplexity(lm.model->w, tokens, po);
    EXPECT_EQ(r.n_chunks, 3);
    ppl[k++] = r.ppl;
  }
  // Same tokens, same windows: only the weights differ.
  EXPECT_GT(ppl[0], 3.0);
  EXPECT_LT(ppl[0], 12.0);
  EXPECT_LT(std::fabs(ppl[1] / ppl[0] - 1), 0.003) << "float " << ppl[0] << " lut8 " << ppl[1];
  EXPECT_NE(ppl[1], ppl[0]);  // the weights were quantized
}
