// The GPU training attention (ops/cuda/attention_train) against its CPU twin run in fp64
// (cpu::attention_forward_train / attention_backward<double> on the same fp32 inputs, exact to
// ~1e-16, so every difference is the GPU's fp32 rounding): out, lse, dq, dk, dv on shapes with
// one token, sequence lengths that are no multiple of the 32-token tile, GQA groups of 1 to 6
// and every head size; bitwise determinism; refused shapes.
//
// Tolerances, per shape, in units of the fp32 roundoff u (fp32_sum_tol(n) = 4 sqrt(n + 1) u is
// the norm-relative error of fp32 sums of n terms of random sign, with a 4x margin):
//   e_s  = fp32_sum_tol(HS) sq sk: absolute error of a score q . k / sqrt(HS), an HS-term dot
//          whose value has rms sq sk (sq, sk: the rms of q's and k's elements);
//   e_x  = 8 u (1 + sq sk): expf is within 2 ulps (4 u) of exp of its argument, and the argument
//          (s - m, or s / sqrt(HS) - lse) is rounded to u |arg|, |arg| a few times sq sk;
//   e_w  = e_s + e_x: relative error of every softmax weight (the absolute error of its exponent);
//   out:  e_w + fp32_sum_tol(T) (the T-term sums of the weights and of the weighted values),
//         norm-relative;
//   lse:  rms absolute error e_s + fp32_sum_tol(T) + 2 u rms(lse) (the weighted mean of the
//         score errors, the relative error of the sum, log and the final addition);
// The backward is fed the GPU forward's out and lse (the chain a trainer runs), so
//   e_p  = e_w + tol_lse: relative error of a recomputed p = exp(s - lse);
//   dv:   e_p + fp32_sum_tol(G T) (G = NH / KVH heads of T queries add into a key), norm-relative;
//   ds = p (dp - D): dp and D are HS-term dots (fp32_sum_tol(HS) each, relative to |dp| + |D|)
//         and D inherits out's error: e_ds = e_p + 2 fp32_sum_tol(HS) + tol_out, relative to
//         p (|dp| + |D|); dp - D cancels (exactly at T = 1, where dq = dk = 0: one key, the
//         softmax is constant), so dq and dk are measured against the magnitudes of their terms,
//         M_dq,i = sum_j p_ij (|dp_ij| + |D_i|) |k_j| / sqrt(HS) and M_dk likewise with |q_i|:
//   dq:   ||dq - ref|| / ||M_dq|| <= e_ds + fp32_sum_tol(T);
//   dk:   ||dk - ref|| / ||M_dk|| <= e_ds + fp32_sum_tol(G T).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "attention_testing.h"
#include "gpu_testing.h"
#include "ops/cpu/attention_backward.h"
#include "ops/cuda/attention_train.h"

using namespace gputest;
using namespace attntest;

namespace {

struct Results {
  std::vector<float> out, lse, dq, dk, dv;
};
// The GPU forward, then the backward fed its out and lse, into NaN-poisoned, guarded outputs.
Results run_gpu(const Shape& sh, const Inputs& in) {
  const size_t nq = in.q.size(), nk = in.k.size(), nl = size_t(sh.B * sh.NH * sh.T);
  const auto q = to_device(in.q), k = to_device(in.k), v = to_device(in.v), dout = to_device(in.dout);
  auto out = guarded(nq), lse = guarded(nl), dq = guarded(nq), dk = guarded(nk), dv = guarded(nk);
  cuda::attention_forward_train(out.as<float>(), lse.as<float>(), q.as<float>(), k.as<float>(), v.as<float>(), sh.B,
                                sh.T, sh.NH, sh.KVH, sh.HS, nullptr);
  cuda::attention_backward(dq.as<float>(), dk.as<float>(), dv.as<float>(), dout.as<float>(), out.as<float>(),
                           q.as<float>(), k.as<float>(), v.as<float>(), lse.as<float>(), sh.B, sh.T, sh.NH, sh.KVH,
                           sh.HS, nullptr);
  Results r;
  r.out = unguard(out, nq, "out"), r.lse = unguard(lse, nl, "lse");
  r.dq = unguard(dq, nq, "dq"), r.dk = unguard(dk, nk, "dk"), r.dv = unguard(dv, nk, "dv");
  return r;
}

}  // namespace

TEST(GpuAttentionTrain, MatchesCpuTwin) {
  REQUIRE_GPU();
  for (const Shape& sh : {Shape{2, 1, 4, 2, 32}, Shape{1, 77, 8, 4, 32}, Shape{3, 65, 6, 1, 96},
                          Shape{2, 300, 12, 2, 128}, Shape{1, 1024, 8, 8, 64}}) {
    SCOPED_TRACE(sh.str());
    const Inputs in = make_inputs(sh, uint32_t(sh.T + sh.HS));
    const auto q = widen(in.q), k = widen(in.k), v = widen(in.v), dout = widen(in.dout);
    std::vector<double> out(q.size()), lse(size_t(sh.B * sh.NH * sh.T)), dq(q.size()), dk(k.size()), dv(k.size());
    cpu::attention_forward_train(out.data(), lse.data(), q.data(), k.data(), v.data(), sh.B, sh.T, sh.NH, sh.KVH,
                                 sh.HS);
    cpu::attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), out.data(), q.data(), k.data(), v.data(),
                            lse.data(), sh.B, sh.T, sh.NH, sh.KVH, sh.HS);
    std::vector<double> mdq, mdk;
    term_magnitudes(sh, q, k, v, dout, out, lse, mdq, mdk);

    const Results got = run_gpu(sh, in);
    const int64_t G = sh.NH / sh.KVH;
    const double sqk = double(kSq) * kSk;
    const double e_s = fp32_sum_tol(sh.HS) * sqk, e_w = e_s + 8 * kU * (1 + sqk);
    const double tol_out = e_w + fp32_sum_tol(sh.T);
    const double tol_lse = e_s + fp32_sum_tol(sh.T) + 2 * kU * rms(lse);
    const double e_p = e_w + tol_lse, e_ds = e_p + 2 * fp32_sum_tol(sh.HS) + tol_out;
    EXPECT_LE(rel_err(got.out, out), tol_out) << "out";
    EXPECT_LE(rms_err(got.lse, lse), tol_lse) << "lse";
    EXPECT_LE(rel_err(got.dv, dv), e_p + fp32_sum_tol(G * sh.T)) << "dv";
    EXPECT_LE(err_vs(got.dq, dq, mdq), e_ds + fp32_sum_tol(sh.T)) << "dq";
    EXPECT_LE(err_vs(got.dk, dk, mdk), e_ds + fp32_sum_tol(G * sh.T)) << "dk";
  }
}

// No atomics and fixed summation orders: two runs give the same bits, whatever the output
// buffers held before (NaN the first time, zeros the second; dq also serves as scratch).
TEST(GpuAttentionTrain, BitwiseDeterministic) {
  REQUIRE_GPU();
  const Shape sh{2, 100, 6, 2, 64};
  const Inputs in = make_inputs(sh, 99);
  const Results a = run_gpu(sh, in);
  const size_t nq = in.q.size(), nk = in.k.size(), nl = size_t(sh.B * sh.NH * sh.T);
  const auto q = to_device(in.q), k = to_device(in.k), v = to_device(in.v), dout = to_device(in.dout);
  const auto zero = [](size_t n) { return to_device(std::vector<float>(n, 0.0f)); };
  auto out = zero(nq), lse = zero(nl), dq = zero(nq), dk = zero(nk), dv = zero(nk);
  cuda::attention_forward_train(out.as<float>(), lse.as<float>(), q.as<float>(), k.as<float>(), v.as<float>(), sh.B,
                                sh.T, sh.NH, sh.KVH, sh.HS, nullptr);
  cuda::attention_backward(dq.as<float>(), dk.as<float>(), dv.as<float>(), dout.as<float>(), out.as<float>(),
                           q.as<float>(), k.as<float>(), v.as<float>(), lse.as<float>(), sh.B, sh.T, sh.NH, sh.KVH,
                           sh.HS, nullptr);
  const auto same_bits = [](const std::vector<float>& x, const std::vector<float>& y) {
    return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0;
  };
  EXPECT_TRUE(same_bits(a.out, to_host<float>(out, nq))) << "out";
  EXPECT_TRUE(same_bits(a.lse, to_host<float>(lse, nl))) << "lse";
  EXPECT_TRUE(same_bits(a.dq, to_host<float>(dq, nq))) << "dq";
  EXPECT_TRUE(same_bits(a.dk, to_host<float>(dk, nk))) << "dk";
  EXPECT_TRUE(same_bits(a.dv, to_host<float>(dv, nk))) << "dv";
}

// Head sizes without a kernel and query heads that are no multiple of the KV heads are refused
// with primal::Error before anything is launched (null pointers: nothing may be touched).
TEST(GpuAttentionTrain, RefusesUnsupportedShapes) {
  REQUIRE_GPU();
  for (int64_t HS : {16, 48, 100, 256}) {
    EXPECT_FALSE(cuda::attention_train_supports(HS)) << HS;
    EXPECT_THROW(cuda::attention_forward_train(nullptr, nullptr, nullptr, nullptr, nullptr, 1, 8, 4, 2, HS, nullptr),
                 Error)
        << HS;
    EXPECT_THROW(cuda::attention_backward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                          nullptr, 1, 8, 4, 2, HS, nullptr),
                 Error)
        << HS;
  }
  EXPECT_THROW(cuda::attention_forward_train(nullptr, nullptr, nullptr, nullptr, nullptr, 1, 8, 6, 4, 64, nullptr),
               Error);
  EXPECT_THROW(cuda::attention_backward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                        1, 8, 6, 4, 64, nullptr),
               Error);
}
