// The GPU element-wise, attention and sampling kernels against their CPU twins on random inputs
// of awkward shapes. Tolerances are stated at each check with their derivation.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "gpu_testing.h"
#include "infer/backend.h"
#include "ops/cpu/attention.h"
#include "ops/cpu/rmsnorm.h"
#include "ops/cpu/rope.h"
#include "ops/cpu/swiglu.h"
#include "ops/cuda/attention.h"
#include "ops/cuda/elementwise.h"
#include "ops/cuda/sampling.h"

using namespace gputest;

namespace {

std::vector<float> f16_round(std::vector<float> v) {
  for (float& x : v) x = f16_to_f32(f32_to_f16(x));
  return v;
}

std::vector<float> from_f16(const std::vector<uint16_t>& h) {
  std::vector<float> v(h.size());
  for (size_t i = 0; i < h.size(); ++i) v[i] = f16_to_f32(h[i]);
  return v;
}

// |a - b| within one fp16 ulp of b (the fp32 values behind them may differ by an fp32 ulp, which
// can move a rounding to the neighbouring fp16 value).
bool within_f16_ulp(float a, float b) { return std::fabs(a - b) <= std::fabs(b) * 2 * kU16 + 6e-8f; }

}  // namespace

// RMSNorm rows to fp16: the CPU's fp32 value rounded (the fp64 sums of squares may differ in
// order, so the fp32 value by an ulp, so the fp16 value by one of its ulps at most).
TEST(GpuRmsNorm, RowsToFp16) {
  REQUIRE_GPU();
  for (auto [T, C] : {std::pair<int64_t, int64_t>{1, 32}, {3, 896}, {53, 4096}}) {
    const auto x = randn(size_t(T * C), 1, 3.0f), w = randn(size_t(C), 2);
    std::vector<float> ref(x.size());
    cpu::rmsnorm_forward(ref.data(), x.data(), w.data(), T, C, 1e-6f);
    const auto xd = to_device(x), wd = to_device(w);
    cuda::DeviceBuffer out(x.size() * 2);
    cuda::rmsnorm_f16(xd.as<float>(), wd.as<float>(), T, C, 1e-6f, out.data(), nullptr);
    const auto got = from_f16(to_host<uint16_t>(out, x.size()));
    for (size_t i = 0; i < x.size(); ++i) ASSERT_TRUE(within_f16_ulp(got[i], ref[i])) << i << ": " << got[i] << " vs " << ref[i];
  }
}

TEST(GpuSwiGLU, Fp16AndFp32) {
  REQUIRE_GPU();
  const int64_t T = 3, F = 53 * 32;
  const auto gu = randn(size_t(T * 2 * F), 3, 3.0f);
  std::vector<float> g(size_t(T * F)), u(size_t(T * F)), ref(size_t(T * F));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t f = 0; f < F; ++f) g[size_t(t * F + f)] = gu[size_t(t * 2 * F + f)], u[size_t(t * F + f)] = gu[size_t(t * 2 * F + F + f)];
  cpu::swiglu_forward(ref.data(), g.data(), u.data(), T * F);
  const auto gud = to_device(gu);
  cuda::DeviceBuffer out(ref.size() * 2);
  cuda::swiglu_f16(gud.as<float>(), T, F, out.data(), nullptr);
  const auto got = from_f16(to_host<uint16_t>(out, ref.size()));
  // expf on the GPU is within 2 ulps of exp: the fp32 result within ~4 ulps, fp16 within one ulp.
  for (size_t i = 0; i < ref.size(); ++i) ASSERT_TRUE(within_f16_ulp(got[i], ref[i])) << i;
  const auto gd = to_device(g), ud = to_device(u);
  auto o32 = poisoned(ref.size());
  cuda::swiglu_f32(gd.as<float>(), ud.as<float>(), T * F, o32.as<float>(), nullptr);
  const auto got32 = to_host<float>(o32, ref.size());
  for (size_t i = 0; i < ref.size(); ++i) ASSERT_NEAR(got32[i], ref[i], 8 * kU * std::fabs(ref[i]) + 1e-37) << i;
}

// Bias, RoPE (both layouts, partial rotation) and the fp16 cache writes. The angle and its
// cos/sin are fp64 on both sides (the GPU's in a table per position) and the rotation the same
// four fp32 products, so values agree to an ulp (the fp64 cos/sin of the two libraries may
// round differently, very rarely).
TEST(GpuRope, QkvBiasRotationAndCache) {
  REQUIRE_GPU();
  for (bool neox : {false, true}) {
    for (auto [T, NH, KVH, HS, n_rot, pos0] :
         {std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t>{1, 4, 2, 32, 32, 0},
          {3, 12, 2, 128, 128, 1000},
          {53, 8, 8, 64, 32, 17}}) {
      SCOPED_TRACE(std::to_string(T) + " neox " + std::to_string(neox));
      const int64_t Q = NH * HS, KV = KVH * HS, W = Q + 2 * KV, n_ctx = pos0 + T + 3;
      const auto qkv = randn(size_t(T * W), 5, 2.0f), bias = randn(size_t(W), 6);
      cpu::RopeParams rp;
      rp.head_dim = HS, rp.n_rot = n_rot, rp.neox = neox, rp.inv_freq = cpu::rope_inv_freq(n_rot, 1e6, 1.0, nullptr);
      std::vector<float> q(size_t(T * Q)), k(size_t(T * KV)), v(size_t(T * KV));
      for (int64_t t = 0; t < T; ++t)
        for (int64_t i = 0; i < W; ++i) {
          const float x = qkv[size_t(t * W + i)] + bias[size_t(i)];
          if (i < Q) q[size_t(t * Q + i)] = x;
          else if (i < Q + KV) k[size_t(t * KV + i - Q)] = x;
          else v[size_t(t * KV + i - Q - KV)] = x;
        }
      cpu::rope_forward(q.data(), T, NH, pos0, rp);
      cpu::rope_forward(k.data(), T, KVH, pos0, rp);

      auto qkvd = to_device(qkv);
      const auto bd = to_device(bias), fd = to_device(rp.inv_freq), posd = to_device(std::vector<int32_t>{int32_t(pos0)});
      cuda::DeviceBuffer kc(size_t(n_ctx * KV) * 2), vc(size_t(n_ctx * KV) * 2), cs(size_t(n_ctx * n_rot / 2) * 8);
      cuda::rope_table(fd.as<double>(), n_rot / 2, n_ctx, cs.data(), nullptr);
      cuda::RopeQkvParams p;
      p.qkv = qkvd.as<float>(), p.bias = bd.as<float>(), p.T = T, p.NH = NH, p.KVH = KVH, p.HS = HS, p.n_rot = n_rot;
      p.neox = neox, p.cos_sin = cs.data(), p.pos0 = posd.as<int32_t>(), p.k_cache = kc.data(), p.v_cache = vc.data();
      cuda::rope_qkv(p, nullptr);
      const auto got = to_host<float>(qkvd, qkv.size());
      const auto kg = from_f16(to_host<uint16_t>(kc, size_t(n_ctx * KV)));
      const auto vg = from_f16(to_host<uint16_t>(vc, size_t(n_ctx * KV)));
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t i = 0; i < Q; ++i)
          ASSERT_NEAR(got[size_t(t * W + i)], q[size_t(t * Q + i)], 4 * kU * (std::fabs(q[size_t(t * Q + i)]) + 1)) << t << "," << i;
        for (int64_t i = 0; i < KV; ++i) {
          ASSERT_TRUE(within_f16_ulp(kg[size_t((pos0 + t) * KV + i)], k[size_t(t * KV + i)])) << "k " << t << "," << i;
          ASSERT_EQ(vg[size_t((pos0 + t) * KV + i)], f16_to_f32(f32_to_f16(v[size_t(t * KV + i)]))) << "v " << t << "," << i;
        }
      }
    }
  }
}

// Attention over an fp16 cache against the CPU op fed the same fp16-rounded keys and values.
// Decode (fp32 out): the softmax is formed in another order (online, per split) and with the
// GPU's expf (2 ulps): norm-relative error of the fp32 sums of P terms, fp32_sum_tol(P), plus
// 8 u for exp. Prefill (fp16 out): the same plus the fp16 rounding of the output, u16 / 2.
// Head sizes 32, 64, 128, 256 have the tensor-core kernel too, and 96 checks the fallback alone.
TEST(GpuAttention, DecodeAndPrefillMatchCpu) {
  REQUIRE_GPU();
  for (auto [NH, KVH, HS] :
       {std::tuple<int64_t, int64_t, int64_t>{12, 2, 128}, {8, 4, 32}, {14, 2, 64}, {4, 4, 256}, {6, 3, 96}}) {
    for (auto [T, pos0] : {std::pair<int64_t, int64_t>{1, 0}, {1, 1}, {1, 52}, {1, 300}, {1, 2500}, {3, 0}, {53, 0},
                           {53, 17}, {100, 450}}) {
      SCOPED_TRACE(std::to_string(NH) + "/" + std::to_string(KVH) + "/" + std::to_string(HS) + " T " +
                   std::to_string(T) + " pos0 " + std::to_string(pos0));
      const int64_t KV = KVH * HS, P = pos0 + T, n_ctx = P + 5;
      const auto q = randn(size_t(T * NH * HS), 7, 1.5f);
      const auto k = f16_round(randn(size_t(n_ctx * KV), 8, 1.5f)), v = f16_round(randn(size_t(n_ctx * KV), 9));
      std::vector<float> ref(q.size());
      cpu::attention_forward(ref.data(), q.data(), k.data(), v.data(), T, pos0, NH, KVH, HS);
      std::vector<uint16_t> k16(k.size()), v16(v.size());
      for (size_t i = 0; i < k.size(); ++i) k16[i] = f32_to_f16(k[i]), v16[i] = f32_to_f16(v[i]);
      const auto qd = to_device(q), kd = to_device(k16), vd = to_device(v16);
      const auto posd = to_device(std::vector<int32_t>{int32_t(pos0)});
      cuda::AttentionParams p;
      p.q = qd.as<float>(), p.k_cache = kd.data(), p.v_cache = vd.data(), p.pos0 = posd.as<int32_t>();
      p.T = T, p.NH = NH, p.KVH = KVH, p.HS = HS;
      const std::vector<double> want(ref.begin(), ref.end());
      const double tol = fp32_sum_tol(P) + 8 * kU;
      if (T == 1) {
        const int splits = cuda::attention_decode_splits(KVH);
        cuda::DeviceBuffer part(cuda::attention_decode_scratch(NH, HS, splits));
        cuda::fill_bytes_async(part.data(), 0, part.size(), nullptr);
        auto out = poisoned(size_t(NH * HS));
        cuda::attention_decode(p, splits, part.data(), out.as<float>(), nullptr);
        EXPECT_LE(rel_err(to_host<float>(out, ref.size()), want), tol);
      }
      cuda::DeviceBuffer o16(ref.size() * 2);
      cuda::fill_bytes_async(o16.data(), 0xff, ref.size() * 2, nullptr);  // NaN poison
      cuda::attention_prefill_fp32(p, o16.data(), nullptr);
      EXPECT_LE(rel_err(from_f16(to_host<uint16_t>(o16, ref.size())), want), tol + kU16 / 2) << "fp32 kernel";
      // Tensor cores: q and the probabilities rounded to fp16 as well (u16 / 2 relative each,
      // the scores' error entering the softmax at the same relative size): 2 u16 in all.
      cuda::fill_bytes_async(o16.data(), 0xff, ref.size() * 2, nullptr);
      if (cuda::attention_prefill_tc(p, o16.data(), nullptr))
        EXPECT_LE(rel_err(from_f16(to_host<uint16_t>(o16, ref.size())), want), tol + 2 * kU16) << "tensor cores";
      else
        EXPECT_EQ(HS, 96) << "no tensor-core kernel for head size " << HS;
    }
  }
}

// Decode attention with RoPE fused in (bias, rotation of q and the new k, the cache store) gives
// exactly what rope_qkv followed by the plain decode kernel gives: the same output bits and the
// same cache. Positions at chunk edges (0, 31, 32) and past one block's chunks (300).
TEST(GpuAttention, DecodeWithFusedRopeEqualsRopeThenDecode) {
  REQUIRE_GPU();
  for (auto [NH, KVH, HS, n_rot, neox] :
       {std::tuple<int64_t, int64_t, int64_t, int64_t, bool>{12, 2, 128, 128, true}, {8, 4, 32, 32, false},
        {6, 3, 96, 32, false}, {4, 4, 256, 64, true}}) {
    for (int64_t pos : {0, 31, 32, 300}) {
      SCOPED_TRACE(std::to_string(NH) + "/" + std::to_string(KVH) + "/" + std::to_string(HS) + " pos " +
                   std::to_string(pos));
      const int64_t Q = NH * HS, KV = KVH * HS, W = Q + 2 * KV, n_ctx = pos + 4;
      const auto row = randn(size_t(W), 11, 2.0f), bias = randn(size_t(W), 12);
      const auto cache0 = randn(size_t(n_ctx * KV), 13, 1.5f);
      std::vector<uint16_t> c16(cache0.size());
      for (size_t i = 0; i < c16.size(); ++i) c16[i] = f32_to_f16(cache0[i]);
      const auto inv = cpu::rope_inv_freq(n_rot, 1e4, 1.0, nullptr);
      const auto fd = to_device(inv), posd = to_device(std::vector<int32_t>{int32_t(pos)});
      cuda::DeviceBuffer cs(size_t(n_ctx * n_rot / 2) * 8);
      cuda::rope_table(fd.as<double>(), n_rot / 2, n_ctx, cs.data(), nullptr);
      const auto bd = to_device(bias);
      const int splits = cuda::attention_decode_splits(KVH);
      std::vector<float> out[2];
      std::vector<uint16_t> kc[2], vc[2];
      for (int fused = 0; fused < 2; ++fused) {
        auto qkv = to_device(row);
        auto k = to_device(c16), v = to_device(c16);
        cuda::RopeQkvParams r;
        r.qkv = qkv.as<float>(), r.bias = bd.as<float>(), r.T = 1, r.NH = NH, r.KVH = KVH, r.HS = HS;
        r.n_rot = n_rot, r.neox = neox, r.cos_sin = cs.data(), r.pos0 = posd.as<int32_t>();
        r.k_cache = k.data(), r.v_cache = v.data();
        cuda::AttentionParams p;
        p.q = qkv.as<float>(), p.k_cache = k.data(), p.v_cache = v.data(), p.pos0 = posd.as<int32_t>();
        p.T = 1, p.NH = NH, p.KVH = KVH, p.HS = HS;
        if (fused) p.fuse_rope = true, p.rope = r;
        else cuda::rope_qkv(r, nullptr);
        cuda::DeviceBuffer part(cuda::attention_decode_scratch(NH, HS, splits));
        cuda::fill_bytes_async(part.data(), 0, part.size(), nullptr);
        auto o = poisoned(size_t(Q));
        cuda::attention_decode(p, splits, part.data(), o.as<float>(), nullptr);
        out[fused] = to_host<float>(o, size_t(Q));
        kc[fused] = to_host<uint16_t>(k, c16.size());
        vc[fused] = to_host<uint16_t>(v, c16.size());
      }
      EXPECT_EQ(out[1], out[0]);
      EXPECT_EQ(kc[1], kc[0]);
      EXPECT_EQ(vc[1], vc[0]);
      EXPECT_NE(kc[0], c16);  // the new key was stored
    }
  }
}

// Penalty, argmax and top-k on the device select exactly what the host selects: same ids in the
// same order, same (penalized) logits, ties broken by the lower id.
TEST(GpuSampling, TopKAndArgmaxEqualHost) {
  REQUIRE_GPU();
  for (int64_t V : {5, 2049, 50257, 151936}) {
    auto logits = randn(size_t(V), uint32_t(V), 3.0f);
    for (int64_t i = 0; i + 7 < V; i += 97) logits[size_t(i + 7)] = logits[size_t(i)];  // ties
    if (V > 100) logits[99] = logits[3] = 50.0f;  // a tie at the top
    const std::vector<int32_t> recent = {3, 3, 1, int32_t(V - 1), 0};
    std::vector<int32_t> distinct = {3, 1, int32_t(V - 1), 0};
    for (float penalty : {1.0f, 1.3f}) {
      auto work = to_device(logits);
      const auto ids = to_device(distinct);
      cuda::apply_penalty(work.as<float>(), ids.as<int32_t>(), int(distinct.size()), penalty, nullptr);
      for (int64_t k : {int64_t(1), int64_t(2), int64_t(40), int64_t(128)}) {
        if (k > V) continue;
        SCOPED_TRACE("V " + std::to_string(V) + " k " + std::to_string(k) + " penalty " + std::to_string(penalty));
        const auto want = top_k_host(logits.data(), V, k, penalty, recent);
        std::vector<uint64_t> keys;
        cuda::DeviceBuffer out(size_t(k) * 8);
        if (k == 1) {
          cuda::argmax_key(work.as<float>(), V, out.as<uint64_t>(), nullptr);
        } else {
          cuda::DeviceBuffer scratch(cuda::top_k_scratch_bytes(V, int(k)));
          cuda::top_k_keys(work.as<float>(), V, int(k), scratch.data(), out.as<uint64_t>(), nullptr);
        }
        keys = to_host<uint64_t>(out, size_t(k));
        for (int64_t i = 0; i < k; ++i) {
          ASSERT_EQ(cuda::key_id(keys[size_t(i)]), want[size_t(i)].id) << i;
          ASSERT_EQ(cuda::key_logit(keys[size_t(i)]), want[size_t(i)].logit) << i;
        }
      }
    }
  }
}
