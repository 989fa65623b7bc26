// The GPU kernels of the LUT formats (LUT2..LUT6, LUT8, LUT16) against their CPU twins:
// the upload (indices as stored, scales expanded to one per 32-element unit, the grid), the
// GEMV of decode (every output mode, several segments with their own grids, the RMSNorm
// prologue), the fp16 dequantization of prefill and the embedding rows (both bit-exact), the
// stacking of matrices that share a grid, and the refusal of what the GPU cannot read.
//
// The matrices are random indices (every grid entry is hit, LUT16's 65536 included) with random
// fp16 scales, packed by the library (quant/lut_format.h); the CPU dequantization
// (dequantize_tensor, through the attached scale and grid) is the reference.
// GEMV tolerance: the GPU forms s * sum_e grid[idx_e] x_e in fp32 (n products and sums, then one
// product with the scale), so each output is within (n + 2) u sum|w x| of the exact value, +2 u
// for the normalized input (one ulp per element, summed in another order on the CPU): the bound
// (I + 4) u sum|w x|, as for the other fp32-input formats (test_gemv_cuda.cpp). The input is not
// rounded to int8 for LUT formats (gemv_quantizes_input is false).
#include <gtest/gtest.h>

#include <cmath>

#include "gpu_testing.h"
#include "ops/cpu/rmsnorm.h"
#include "ops/cuda/dequant.h"
#include "ops/cuda/gemv.h"
#include "quant/lut_format.h"
#include "quant/lut_grid.h"
#include "quant/lut_pack.h"

using namespace gputest;
using primal::cuda::GemvMode;
using primal::cuda::GemvParams;

namespace {

const DType kLut[] = {DType::LUT2, DType::LUT3, DType::LUT4, DType::LUT5, DType::LUT6, DType::LUT8, DType::LUT16};

// A LUT matrix of O rows of I: random indices, random fp16 scales (one per `group`; 0 = per row),
// the NF grid of the type's size stretched by `stretch` (so that segments have their own grids),
// its CPU dequantization and its upload.
struct LutWeight {
  std::unique_ptr<PackedLut> packed;
  std::vector<float> deq;  // (O, I)
  cuda::DeviceMatrix dev;
};

LutMatrix random_lut(DType t, int64_t O, int64_t I, int64_t group, uint32_t seed, float stretch = 1.0f) {
  LutMatrix m;
  m.type = t, m.ne0 = I, m.ne1 = O, m.group = group > 0 ? group : I;
  const int64_t K = lut_entries(t);
  m.grid = nf4_grid(K);
  for (float& g : m.grid) g *= stretch;
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int64_t> pick(0, K - 1);
  m.idx.resize(size_t(O * I));
  for (auto& v : m.idx) v = uint16_t(pick(rng));
  const auto s = randn(size_t(O * (I / m.group)), seed + 1, 0.05f);
  for (float v : s) m.scale.push_back(f32_to_f16(v));
  return m;
}

LutWeight make_lut_weight(DType t, int64_t O, int64_t I, int64_t group, uint32_t seed, float stretch = 1.0f) {
  LutWeight w;
  w.packed = pack_lut_matrix("test.weight", random_lut(t, O, I, group, seed, stretch));
  w.deq.resize(size_t(O * I));
  dequantize_tensor(w.packed->ref, w.deq.data());
  w.dev = cuda::upload_matrix(w.packed->ref);
  return w;
}

struct Case {
  DType type;
  int64_t I, group;        // group 0: one scale per row
  std::vector<int64_t> O;  // rows per segment
  bool norm = false, bias = false;
  GemvMode mode = GemvMode::Store;
};

void run_case(const Case& c, uint32_t seed) {
  SCOPED_TRACE(dtype_name(c.type) + " I=" + std::to_string(c.I) + " G=" + std::to_string(c.group) + " O0=" +
               std::to_string(c.O[0]) + " segs=" + std::to_string(c.O.size()) + " mode=" + std::to_string(int(c.mode)));
  const int64_t I = c.I;
  const int n_seg = int(c.O.size());
  ASSERT_FALSE(cuda::gemv_quantizes_input(c.type));
  std::vector<LutWeight> w;
  for (int k = 0; k < n_seg; ++k)
    w.push_back(make_lut_weight(c.type, c.O[size_t(k)], I, c.group, seed + 17 * k, 1.0f + 0.25f * float(k)));
  const auto x = randn(size_t(I), seed + 1, 2.0f), nw = randn(size_t(I), seed + 2);
  std::vector<float> xn = x;
  if (c.norm) cpu::rmsnorm_forward(xn.data(), x.data(), nw.data(), 1, I, 1e-5f);
  std::vector<std::vector<double>> y(static_cast<size_t>(n_seg)), bound(static_cast<size_t>(n_seg));
  for (int k = 0; k < n_seg; ++k) {
    for (int64_t o = 0; o < c.O[size_t(k)]; ++o) {
      double s = 0, a = 0;
      for (int64_t i = 0; i < I; ++i) {
        const double p = double(w[size_t(k)].deq[size_t(o * I + i)]) * xn[size_t(i)];
        s += p, a += std::fabs(p);
      }
      y[size_t(k)].push_back(s);
      bound[size_t(k)].push_back(double(I + 4) * kU * a + 1e-37);
    }
  }
  const auto xd = to_device(x), nwd = to_device(nw);
  GemvParams p;
  p.n_seg = n_seg, p.x = xd.as<float>(), p.norm_w = c.norm ? nwd.as<float>() : nullptr, p.mode = c.mode;
  std::vector<cuda::DeviceBuffer> outs, biases;
  std::vector<std::vector<float>> init, bias_h;
  for (int k = 0; k < n_seg; ++k) {
    const size_t O = size_t(c.O[size_t(k)]);
    init.push_back(randn(O, seed + 100 + k));
    bias_h.push_back(randn(O, seed + 200 + k));
    outs.push_back(c.mode == GemvMode::Accumulate ? to_device(init.back()) : poisoned(O));
    biases.push_back(to_device(bias_h.back()));
    p.seg[k].w = w[size_t(k)].dev.view;
    p.seg[k].out = outs.back().as<float>();
    p.seg[k].bias = c.bias ? biases.back().as<float>() : nullptr;
  }
  if (c.mode == GemvMode::SwiGLU) p.seg[1].out = p.seg[0].out;
  cuda::gemv(p, nullptr);
  cuda::Stream::sync_stream(nullptr);

  const int n_out = c.mode == GemvMode::SwiGLU ? 1 : n_seg;
  for (int k = 0; k < n_out; ++k) {
    const int64_t O = c.O[size_t(k)];
    const auto got = to_host<float>(outs[size_t(k)], size_t(O));
    double err2 = 0, mag2 = 0;
    for (int64_t o = 0; o < O; ++o) {
      double v = y[size_t(k)][size_t(o)], tol = bound[size_t(k)][size_t(o)];
      const double a = tol / (double(I + 4) * kU);
      if (c.mode == GemvMode::Store && c.bias) v += bias_h[size_t(k)][size_t(o)], tol += kU * std::fabs(v);
      if (c.mode == GemvMode::Accumulate) v += init[size_t(k)][size_t(o)], tol += kU * std::fabs(v);
      if (c.mode == GemvMode::SwiGLU) {  // as in test_gemv_cuda.cpp
        const double g = v, u = y[1][size_t(o)], sg = g / (1 + std::exp(-g));
        v = sg * u;
        tol = 1.1 * std::fabs(u) * tol + std::fabs(sg) * bound[1][size_t(o)] + 8 * kU * std::fabs(v) + 1e-37;
      }
      ASSERT_NEAR(got[size_t(o)], v, tol) << "row " << o << " of segment " << k;
      err2 += (got[size_t(o)] - v) * (got[size_t(o)] - v), mag2 += a * a;
    }
    // Statistical size of the rounding errors (see test_gemv_cuda.cpp); SwiGLU's products excluded.
    if (c.mode != GemvMode::SwiGLU)
      EXPECT_LE(std::sqrt(err2), 4 * kU * std::sqrt(double(I)) * std::sqrt(mag2) + 1e-30) << "segment " << k;
  }
}

}  // namespace

TEST(GpuLut, GemvAwkwardShapesEveryFormatAndGroup) {
  REQUIRE_GPU();
  uint32_t seed = 1;
  for (DType t : kLut)
    for (int64_t I : {32, 96, 1536, 4128})
      for (int64_t G : {int64_t(32), int64_t(0)})
        for (int64_t O : {1, 3, 53, 300}) run_case({t, I, G, {O}}, seed++);
  for (DType t : kLut) run_case({t, 1536, 128, {257}}, seed++);  // 4 units a scale
}

TEST(GpuLut, GemvNormBiasSegmentsWithOwnGrids) {
  REQUIRE_GPU();
  uint32_t seed = 900;
  for (DType t : kLut) {
    run_case({t, 160, 32, {53}, true, false}, seed++);
    run_case({t, 160, 32, {53, 3, 7}, true, true}, seed++);  // q | k | v, three grids, one launch
    run_case({t, 256, 64, {64, 32, 32}, false, true}, seed++);
  }
}

TEST(GpuLut, GemvAccumulateSwiGLUAndManyRows) {
  REQUIRE_GPU();
  uint32_t seed = 1300;
  for (DType t : kLut) {
    run_case({t, 96, 32, {53}, false, false, GemvMode::Accumulate}, seed++);
    run_case({t, 96, 0, {53, 53}, true, false, GemvMode::SwiGLU}, seed++);
    run_case({t, 64, 32, {1, 1}, false, false, GemvMode::SwiGLU}, seed++);
  }
  for (DType t : {DType::LUT4, DType::LUT8}) {  // two rows per lane group; the deep variant
    run_case({t, 64, 32, {40001}}, seed++);
    run_case({t, 64, 32, {20011, 20011}, true, false, GemvMode::SwiGLU}, seed++);
    run_case({t, 1024, 0, {9000}, true, true}, seed++);
  }
}

// Every dequantized value equals the CPU's bit for bit (fp16: the CPU value rounded), for the
// prefill GEMMs and for the embedding rows.
TEST(GpuLut, DequantRowsToFp16AndEmbeddingRowsExact) {
  REQUIRE_GPU();
  uint32_t seed = 2000;
  for (DType t : kLut) {
    for (int64_t G : {int64_t(32), int64_t(64), int64_t(0)}) {
      SCOPED_TRACE(dtype_name(t) + " G=" + std::to_string(G));
      const int64_t O = 37, I = 576;
      const LutWeight w = make_lut_weight(t, O, I, G, seed++);
      const int64_t r0 = 5, n = 29;
      cuda::DeviceBuffer h(size_t(n * I) * 2);
      cuda::dequant_rows_f16(w.dev.view, r0, n, h.data(), nullptr);
      const auto got = to_host<uint16_t>(h, size_t(n * I));
      for (int64_t k = 0; k < n * I; ++k)
        ASSERT_EQ(got[size_t(k)], f32_to_f16(w.deq[size_t(r0 * I + k)])) << "element " << k;

      const std::vector<int32_t> ids = {36, 0, 7, 7, 19};
      const auto idd = to_device(ids);
      auto e = poisoned(ids.size() * size_t(I));
      cuda::embed_rows(w.dev.view, idd.as<int32_t>(), int64_t(ids.size()), e.as<float>(), nullptr);
      const auto emb = to_host<float>(e, ids.size() * size_t(I));
      for (size_t t2 = 0; t2 < ids.size(); ++t2)
        for (int64_t i = 0; i < I; ++i)
          ASSERT_EQ(f32_to_bits(emb[t2 * size_t(I) + size_t(i)]), f32_to_bits(w.deq[size_t(ids[t2] * I + i)]))
              << "token " << t2 << " element " << i;
    }
  }
}

// Q, K, V (gate, up) of one grid stack into one matrix whose rows are theirs; different grids or
// groups do not stack.
TEST(GpuLut, StackingNeedsTheSameGridAndGroup) {
  REQUIRE_GPU();
  const auto a = pack_lut_matrix("a", random_lut(DType::LUT4, 24, 128, 32, 1));
  const auto b = pack_lut_matrix("b", random_lut(DType::LUT4, 8, 128, 32, 2));
  const auto c = pack_lut_matrix("c", random_lut(DType::LUT4, 8, 128, 32, 3, 1.5f));  // another grid
  const auto d = pack_lut_matrix("d", random_lut(DType::LUT4, 8, 128, 64, 4));        // another group
  EXPECT_TRUE(cuda::can_stack({&a->ref, &b->ref}));
  EXPECT_FALSE(cuda::can_stack({&a->ref, &c->ref}));
  EXPECT_FALSE(cuda::can_stack({&a->ref, &d->ref}));
  EXPECT_THROW(cuda::upload_stacked({&a->ref, &c->ref}), Error);
  const cuda::DeviceMatrix s = cuda::upload_stacked({&a->ref, &b->ref});
  ASSERT_EQ(s.view.rows, 32);
  cuda::DeviceBuffer h(size_t(32 * 128) * 2);
  cuda::dequant_rows_f16(s.view, 0, 32, h.data(), nullptr);
  const auto got = to_host<uint16_t>(h, size_t(32 * 128));
  std::vector<float> want(size_t(32 * 128));
  dequantize_tensor(a->ref, want.data());
  dequantize_tensor(b->ref, want.data() + 24 * 128);
  for (size_t k = 0; k < want.size(); ++k) ASSERT_EQ(got[k], f32_to_f16(want[k])) << "element " << k;
}

// Groups that are no multiple of 32 (the GPU reads one scale per 32 weights) and matrices without
// their scale or grid are refused with an Error naming the tensor.
TEST(GpuLut, UnreadableMatricesAreRefused) {
  REQUIRE_GPU();
  const auto g16 = pack_lut_matrix("blk.0.attn_q.weight", random_lut(DType::LUT4, 4, 64, 16, 1));
  try {
    cuda::upload_matrix(g16->ref);
    FAIL() << "a group of 16 was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("blk.0.attn_q.weight"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("groups of 16"), std::string::npos) << e.what();
  }
  const auto ok = pack_lut_matrix("w", random_lut(DType::LUT8, 4, 64, 32, 2));
  TensorRef bare = ok->ref;
  bare.lut = LutParams{};
  EXPECT_THROW(cuda::upload_matrix(bare), Error);
  TensorRef wrong = ok->ref;
  wrong.lut.n_grid = 16;  // a LUT4-sized grid for LUT8
  EXPECT_THROW(cuda::upload_matrix(wrong), Error);
}
