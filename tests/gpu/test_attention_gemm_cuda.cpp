// The GEMM training attention (ops/cuda/attention_gemm: bf16 operands on the tensor cores, fp32
// accumulation) against its CPU twin run in fp64 (cpu::attention_forward_train /
// attention_backward<double> on the same fp32 inputs, exact to ~1e-16): out, lse, dq, dk, dv on
// shapes with one token, sequence lengths that are no multiple of 8 or 32, GQA groups of 1 to 6,
// head sizes 64 and 128; bitwise determinism; chunking (the minimum workspace against a whole
// sequence's); sentinels past every output and the workspace; refused arguments.
//
// Tolerances, in units of the bf16 unit roundoff ub = 2^-8: twice an rms estimate (independent
// errors add in quadrature; fp32 rounding, ~2^-24 sqrt(n), is added where sums are long but never
// matters). Rounding to bf16 moves a value by at most half an ulp, uniformly: a relative error of
// rms rho <= ub / sqrt(3).
//   e_s   = sqrt(2) rho sq sk: rms absolute error of a score q . k / sqrt(HS) from the bf16 q and
//           k (HS products of rms sq sk, each off by a relative sqrt(2) rho, random signs);
//   lse:  rms absolute error <= e_s (a weighted mean of its row's score errors): tol 2 e_s;
//   e_out = sqrt(e_s^2 + 2 rho^2): relative error of a weight p_j v_j (its exponent s_j - lse is
//           off by at most e_s rms, p and v are rounded to bf16); out: tol 2 e_out, norm-relative.
// The backward is fed the GPU forward's out and lse (the chain a trainer runs); it recomputes the
// same bf16 scores, so p = exp(s / sqrt(HS) - lse) is off as in the forward:
//   dv:   sum of p_i dout_i, dout in bf16: e_out again; tol 2 e_out, norm-relative;
//   ds = p (dp - D): p (e_out), dp (a dot of bf16 dout and v: sqrt(2) rho), D (from the fp32 out:
//         e_out) and ds's own rounding (rho), relative to p (|dp| + |D|); dp - D cancels (exactly
//         at T = 1 and at query 0, where dq = dk = 0), so dq and dk are measured against the
//         magnitudes of their terms, M_dq,i = sum_j p_ij (|dp_ij| + |D_i|) |k_j| / sqrt(HS) and
//         M_dk likewise with |q_i|; k (q) in bf16 adds rho:
//   dq, dk: ||err|| / ||M|| <= 2 e_dq, e_dq = sqrt(2 e_out^2 + 4 rho^2).
// With sq sk = 2.25: lse 3.7 ub, out and dv 4 ub, dq and dk 6.1 ub (a host emulation of the
// kernels with exact GEMM sums measured 1.0, 1.1, 1.1 and 0.4 ub).
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
#include "ops/cuda/attention_gemm.h"
#include "ops/cuda/attention_mma.h"
#include "ops/cuda/cudnn_attention.h"
#include "ops/cuda/gemm.h"
#include "ops/cuda/train_ops.h"

using namespace gputest;
using namespace attntest;

namespace {

size_t min_ws(const Shape& sh) { return cuda::attention_gemm_min_workspace(sh.T, sh.NH, sh.KVH, sh.HS); }
size_t good_ws(const Shape& sh) { return cuda::attention_gemm_good_workspace(sh.T, sh.NH, sh.KVH, sh.HS); }

constexpr double kUb = 1.0 / 256.0;      // bf16 unit roundoff 2^-8
constexpr size_t kWsGuard = 256;  // bytes past the workspace, which no kernel may write
constexpr uint8_t kWsPoison = 0xFF, kWsSentinel = 0x5A;

// `bytes` of workspace poisoned with 0xFF (NaN as fp32 and as bf16, so a read of a region before
// it is written shows), followed by kWsGuard sentinel bytes.
struct Workspace {
  cuda::DeviceBuffer buf;
  size_t bytes;
  explicit Workspace(size_t n) : buf(n + kWsGuard), bytes(n) {
    std::vector<uint8_t> h(n + kWsGuard, kWsPoison);
    std::fill(h.begin() + ptrdiff_t(n), h.end(), kWsSentinel);
    cuda::copy_to_device(buf.data(), h.data(), h.size());
  }
  void expect_guard_intact() const {
    const auto h = to_host<uint8_t>(buf, bytes + kWsGuard);
    for (size_t i = bytes; i < h.size(); ++i)
      EXPECT_EQ(h[i], kWsSentinel) << "workspace of " << bytes << " bytes written past its end at " << i - bytes;
  }
};

// The fp64 CPU twin's results, and the term magnitudes of dq and dk.
struct Reference {
  std::vector<double> out, lse, dq, dk, dv, mdq, mdk;
};
Reference cpu_reference(const Shape& sh, const Inputs& in) {
  const auto q = widen(in.q), k = widen(in.k), v = widen(in.v), dout = widen(in.dout);
  Reference r;
  r.out.resize(q.size()), r.lse.resize(size_t(sh.B * sh.NH * sh.T));
  r.dq.resize(q.size()), r.dk.resize(k.size()), r.dv.resize(k.size());
  cpu::attention_forward_train(r.out.data(), r.lse.data(), q.data(), k.data(), v.data(), sh.B, sh.T, sh.NH, sh.KVH,
                               sh.HS);
  cpu::attention_backward(r.dq.data(), r.dk.data(), r.dv.data(), dout.data(), r.out.data(), q.data(), k.data(),
                          v.data(), r.lse.data(), sh.B, sh.T, sh.NH, sh.KVH, sh.HS);
  term_magnitudes(sh, q, k, v, dout, r.out, r.lse, r.mdq, r.mdk);
  return r;
}

struct Results {
  std::vector<float> out, lse, dq, dk, dv;
};

// The forward and backward by the tensor-core flash kernels (attention_mma.h) instead, outputs guarded.
Results run_mma(const Shape& sh, const Inputs& in, float fill = std::numeric_limits<float>::quiet_NaN(),
               bool per_head = false) {
  const size_t nq = in.q.size(), nl = size_t(sh.B * sh.NH * sh.T);
  const auto q = to_device(in.q), k = to_device(in.k), v = to_device(in.v);
  auto out = guarded(nq, fill), lse = guarded(nl, fill);
  cuda::attention_forward_mma(out.as<float>(), lse.as<float>(), q.as<float>(), k.as<float>(), v.as<float>(), sh.B,
                              sh.T, sh.NH, sh.KVH, sh.HS, nullptr);
  Results r;
  r.out = unguard(out, nq, "out"), r.lse = unguard(lse, nl, "lse");
  // The backward fed that forward's out and lse (the trainer's chain).
  const size_t nk = in.k.size();
  const auto dout = to_device(in.dout);
  auto dq = guarded(nq, fill), dk = guarded(nk, fill), dv = guarded(nk, fill);
  // per_head: the workspace of the GQA heads' shares (poisoned; its guard checked below).
  const size_t nws = per_head ? cuda::attention_backward_mma_workspace(sh.B, sh.T, sh.NH, sh.HS, true) : 1;
  auto ws = guarded(nws, fill);
  cuda::attention_backward_mma(dq.as<float>(), dk.as<float>(), dv.as<float>(), dout.as<float>(), out.as<float>(),
                               q.as<float>(), k.as<float>(), v.as<float>(), lse.as<float>(), sh.B, sh.T, sh.NH, sh.KVH,
                               sh.HS, nullptr, per_head ? ws.as<float>() : nullptr, per_head ? nws : 0);
  unguard(ws, nws, "workspace");
  r.dq = unguard(dq, nq, "dq"), r.dk = unguard(dk, nk, "dk"), r.dv = unguard(dv, nk, "dv");
  return r;
}
// The GPU forward, then the backward fed its out and lse, into outputs filled with `fill` and
// guarded, with a workspace of ws_bytes (poisoned and guarded).
Results run_gpu(cuda::Blas& blas, const Shape& sh, const Inputs& in, size_t ws_bytes,
                float fill = std::numeric_limits<float>::quiet_NaN()) {
  const size_t nq = in.q.size(), nk = in.k.size(), nl = size_t(sh.B * sh.NH * sh.T);
  const auto q = to_device(in.q), k = to_device(in.k), v = to_device(in.v), dout = to_device(in.dout);
  auto out = guarded(nq, fill), lse = guarded(nl, fill), dq = guarded(nq, fill), dk = guarded(nk, fill),
       dv = guarded(nk, fill);
  Workspace ws(ws_bytes);
  cuda::attention_forward_gemm(blas, out.as<float>(), lse.as<float>(), q.as<float>(), k.as<float>(), v.as<float>(),
                               sh.B, sh.T, sh.NH, sh.KVH, sh.HS, ws.buf.data(), ws.bytes, nullptr);
  cuda::attention_backward_gemm(blas, dq.as<float>(), dk.as<float>(), dv.as<float>(), dout.as<float>(),
                                out.as<float>(), q.as<float>(), k.as<float>(), v.as<float>(), lse.as<float>(), sh.B,
                                sh.T, sh.NH, sh.KVH, sh.HS, ws.buf.data(), ws.bytes, nullptr);
  Results r;
  r.out = unguard(out, nq, "out"), r.lse = unguard(lse, nl, "lse");
  r.dq = unguard(dq, nq, "dq"), r.dk = unguard(dk, nk, "dk"), r.dv = unguard(dv, nk, "dv");
  ws.expect_guard_intact();
  return r;
}

// The bounds derived at the top of this file (both tensor-core attentions round the same values).
void expect_within_bounds(const Shape& sh, const Results& got, const Reference& ref) {
  const int64_t G = sh.NH / sh.KVH;
  const double rho = kUb / std::sqrt(3.0), e_s = std::sqrt(2.0) * rho * double(kSq) * kSk;
  const double e_out = std::sqrt(e_s * e_s + 2 * rho * rho), e_dq = std::sqrt(2 * e_out * e_out + 4 * rho * rho);
  EXPECT_LE(rel_err(got.out, ref.out), 2 * e_out + fp32_sum_tol(sh.T)) << "out";
  EXPECT_LE(rms_err(got.lse, ref.lse), 2 * e_s + fp32_sum_tol(sh.T)) << "lse";
  EXPECT_LE(rel_err(got.dv, ref.dv), 2 * e_out + fp32_sum_tol(G * sh.T)) << "dv";
  EXPECT_LE(err_vs(got.dq, ref.dq, ref.mdq), 2 * e_dq + fp32_sum_tol(sh.T)) << "dq";
  EXPECT_LE(err_vs(got.dk, ref.dk, ref.mdk), 2 * e_dq + fp32_sum_tol(G * sh.T)) << "dk";
}

// The bf16 gradients of the backward (attention_mma.h AttentionGradsBf16): one (B T, ld) matrix
// [dq | dk | dv | pad] as the trainer's, filled with 0xFFFF first; the table of a RoPE rotating every
// dimension, or none.
struct Grads16 {
  const float* rope_cs = nullptr;  // device (T, HS / 2, 2), or null
  bool neox = false;
  int64_t pad = 0;                 // values past dv in every row (must stay 0xFFFF)
  bool shares = true;              // a workspace with room for the GQA heads' shares
  std::vector<uint16_t> m;         // out: (B T, ld)
  int64_t ld = 0;                  // out
};

// The flash kernels on bf16 q, k, v (the bf16 trainer's activations: here the fp32 inputs rounded
// to nearest even), out bf16; results widened to fp32 (out from its bf16 bits).
// mode 1: the backward with a workspace on a stream of its own (with room for GQA shares unless g16
// says otherwise); 2: the same, dq's kernel on a second stream; 3: mode 2 with the gradients asked as
// bf16 (g16; r.dq, r.dk, r.dv are then what the fp32 buffers hold); 4: mode 1 with dout passed as bf16
// (its values rounded to nearest even).
Results run_mma_bf16(const Shape& sh, const Inputs& in, int mode = 0, Grads16* g16 = nullptr) {
  auto b16 = [](const std::vector<float>& v) {
    std::vector<uint16_t> b(v.size());
    for (size_t i = 0; i < v.size(); ++i) b[i] = f32_to_bf16(v[i]);
    return b;
  };
  const size_t nq = in.q.size(), nk = in.k.size(), nl = size_t(sh.B * sh.NH * sh.T);
  const auto q = to_device(b16(in.q)), k = to_device(b16(in.k)), v = to_device(b16(in.v));
  const auto dout = to_device(in.dout), dout16 = to_device(b16(in.dout));
  auto out = to_device(std::vector<uint16_t>(nq + 64, 0xFFFF));
  auto lse = guarded(nl), dq = guarded(nq), dk = guarded(nk), dv = guarded(nk);
  cuda::attention_forward_mma(out.as<uint16_t>(), lse.as<float>(), q.as<uint16_t>(), k.as<uint16_t>(), v.as<uint16_t>(),
                              sh.B, sh.T, sh.NH, sh.KVH, sh.HS, nullptr);
  if (mode > 0) {
    cuda::Stream main, other;
    const bool shares = !(g16 && !g16->shares);
    const size_t nws = cuda::attention_backward_mma_workspace(sh.B, sh.T, sh.NH, sh.HS, shares);
    cuda::DeviceBuffer ws(nws * sizeof(float));
    const int64_t Q = sh.NH * sh.HS, KV = sh.KVH * sh.HS, rows = sh.B * sh.T;
    const int64_t ld = Q + 2 * KV + (g16 ? g16->pad : 0);
    auto m16 = to_device(std::vector<uint16_t>(size_t(rows * ld), 0xFFFF));
    cuda::AttentionGradsBf16 g;
    if (mode == 3) {
      uint16_t* base = m16.as<uint16_t>();
      g.dq = base, g.dk = base + Q, g.dv = base + Q + KV, g.ld = ld;
      g.rope_cs = g16->rope_cs, g.neox = g16->neox;
    }
    if (mode == 4)
      cuda::attention_backward_mma(dq.as<float>(), dk.as<float>(), dv.as<float>(), dout16.as<uint16_t>(),
                                   out.as<uint16_t>(), q.as<uint16_t>(), k.as<uint16_t>(), v.as<uint16_t>(),
                                   lse.as<float>(), sh.B, sh.T, sh.NH, sh.KVH, sh.HS, main.get(), ws.as<float>(), nws);
    else
      cuda::attention_backward_mma(dq.as<float>(), dk.as<float>(), dv.as<float>(), dout.as<float>(),
                                   out.as<uint16_t>(), q.as<uint16_t>(), k.as<uint16_t>(), v.as<uint16_t>(),
                                   lse.as<float>(), sh.B, sh.T, sh.NH, sh.KVH, sh.HS, main.get(), ws.as<float>(), nws,
                                   mode == 2 || mode == 3 ? other.get() : nullptr, mode == 3 ? &g : nullptr);
    main.sync();  // (the function made main wait for other)
    if (g16) g16->m = to_host<uint16_t>(m16, size_t(rows * ld)), g16->ld = ld;
  } else {
    cuda::attention_backward_mma(dq.as<float>(), dk.as<float>(), dv.as<float>(), dout.as<float>(),
                                 out.as<uint16_t>(), q.as<uint16_t>(), k.as<uint16_t>(), v.as<uint16_t>(),
                                 lse.as<float>(), sh.B, sh.T, sh.NH, sh.KVH, sh.HS, nullptr);
  }
  const auto ob = to_host<uint16_t>(out, nq + 64);
  for (size_t i = nq; i < ob.size(); ++i) EXPECT_EQ(ob[i], 0xFFFF) << "bf16 out written past its end";
  Results r;
  r.out.resize(nq);
  for (size_t i = 0; i < nq; ++i) r.out[i] = bf16_to_f32(ob[i]);
  r.lse = unguard(lse, nl, "lse");
  r.dq = unguard(dq, nq, "dq"), r.dk = unguard(dk, nk, "dk"), r.dv = unguard(dv, nk, "dv");
  return r;
}

bool same_bits(const std::vector<float>& x, const std::vector<float>& y) {
  return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0;
}

void expect_same_bits(const Results& a, const Results& b) {
  EXPECT_TRUE(same_bits(a.out, b.out)) << "out";
  EXPECT_TRUE(same_bits(a.lse, b.lse)) << "lse";
  EXPECT_TRUE(same_bits(a.dq, b.dq)) << "dq";
  EXPECT_TRUE(same_bits(a.dk, b.dk)) << "dk";
  EXPECT_TRUE(same_bits(a.dv, b.dv)) << "dv";
}

}  // namespace

TEST(GpuAttentionGemm, MatchesCpuTwin) {
  REQUIRE_GPU();
  cuda::Blas blas;
  for (const Shape& sh : {Shape{2, 1, 4, 2, 64}, Shape{2, 77, 6, 6, 64}, Shape{2, 65, 6, 1, 128},
                          Shape{2, 130, 12, 4, 64}, Shape{2, 257, 8, 2, 128}, Shape{2, 100, 10, 2, 64},
                          Shape{2, 300, 12, 2, 128}}) {
    SCOPED_TRACE(sh.str());
    const Inputs in = make_inputs(sh, uint32_t(sh.T + sh.HS + sh.NH));
    const Reference ref = cpu_reference(sh, in);
    expect_within_bounds(sh, run_gpu(blas, sh, in, good_ws(sh)), ref);
  }
}

// No atomics and fixed summation orders: two runs with the same workspace give the same bits,
// whatever the output buffers held before (NaN the first time, zeros the second: dk and dv, which
// a group split over chunks accumulates with beta = 1, must be overwritten first). Both the whole
// sequence's workspace (whole groups per GEMM) and the minimum (one head per chunk) are checked.
TEST(GpuAttentionGemm, BitwiseDeterministic) {
  REQUIRE_GPU();
  cuda::Blas blas;
  const Shape sh{2, 100, 6, 2, 64};
  const Inputs in = make_inputs(sh, 99);
  for (size_t ws : {good_ws(sh), min_ws(sh)}) {
    SCOPED_TRACE("workspace " + std::to_string(ws));
    const Results a = run_gpu(blas, sh, in, ws);
    const Results b = run_gpu(blas, sh, in, ws, 0.0f);
    expect_same_bits(a, b);
  }
}

// Chunking changes which heads share a GEMM (and cuBLAS may pick another kernel for another
// batch count) and splits the sums of dk, dv over a group into beta = 1 additions, so the results
// agree to fp32 rounding, not bitwise: the bf16 copies are the same, the fp32 sums differ in their
// last bits (~2^-24 sqrt(n)), and such a difference flips the bf16 rounding of a P or dS element
// with probability ~ (1e-7 |arg|) / 2^-8 ~ 1e-4, by 2^-7 of the element: a norm-relative
// difference of ~sqrt(1e-4) 2^-7 ~ 2^-14. Bound: ub / 8 = 2^-11 for out, dv, and dq, dk against
// their term magnitudes; lse (no bf16 rounding after the scores) to 4x its fp32 error, the
// fp32_sum_tol(HS) sq sk of a score and 2 u |lse| of the log and the addition.
// Workspaces between the minimum and a whole sequence take chunks of 1, 2, 3 or 6 heads (G = 6).
TEST(GpuAttentionGemm, ChunkingKeepsResults) {
  REQUIRE_GPU();
  cuda::Blas blas;
  const Shape sh{2, 100, 12, 2, 64};
  const Inputs in = make_inputs(sh, 7);
  const Reference ref = cpu_reference(sh, in);
  const Results good = run_gpu(blas, sh, in, good_ws(sh));
  ASSERT_LT(min_ws(sh), good_ws(sh));
  const double tol = kUb / 8;
  const double tol_lse = 4 * (fp32_sum_tol(sh.HS) * double(kSq) * kSk + 2 * kU * rms(ref.lse));
  for (size_t ws : {min_ws(sh), 2 * min_ws(sh), 3 * min_ws(sh), good_ws(sh) / 2, good_ws(sh) - 1}) {
    SCOPED_TRACE("workspace " + std::to_string(ws) + " of " + std::to_string(good_ws(sh)));
    ASSERT_GE(ws, min_ws(sh));
    const Results got = run_gpu(blas, sh, in, ws);
    EXPECT_LE(rel_err(got.out, widen(good.out)), tol) << "out";
    EXPECT_LE(rms_err(got.lse, widen(good.lse)), tol_lse) << "lse";
    EXPECT_LE(rel_err(got.dv, widen(good.dv)), tol) << "dv";
    EXPECT_LE(err_vs(got.dq, widen(good.dq), ref.mdq), tol) << "dq";
    EXPECT_LE(err_vs(got.dk, widen(good.dk), ref.mdk), tol) << "dk";
  }
  // More than a whole sequence changes nothing: the same chunks, the same bits.
  expect_same_bits(good, run_gpu(blas, sh, in, good_ws(sh) + 4096));
}

// A workspace below the minimum (the message names it), a null or misaligned one, query heads
// that are no multiple of the KV heads, head sizes that are no multiple of 8 and null pointers
// are refused with primal::Error before anything is launched.
TEST(GpuAttentionGemm, RefusesBadArguments) {
  REQUIRE_GPU();
  cuda::Blas blas;
  const Shape sh{1, 40, 4, 2, 64};
  const Inputs in = make_inputs(sh, 5);
  const size_t nq = in.q.size(), nk = in.k.size(), nl = size_t(sh.B * sh.NH * sh.T);
  const auto q = to_device(in.q), k = to_device(in.k), v = to_device(in.v), dout = to_device(in.dout);
  auto out = guarded(nq, 0.0f), lse = guarded(nl, 0.0f), dq = guarded(nq, 0.0f), dk = guarded(nk, 0.0f),
       dv = guarded(nk, 0.0f);
  const size_t need = min_ws(sh);
  Workspace ws(need + 64);
  char* wsp = static_cast<char*>(ws.buf.data());
  const auto fwd = [&](void* w, size_t bytes, int64_t NH, int64_t KVH, int64_t HS, const float* qp) {
    cuda::attention_forward_gemm(blas, out.as<float>(), lse.as<float>(), qp, k.as<float>(), v.as<float>(), sh.B, sh.T,
                                 NH, KVH, HS, w, bytes, nullptr);
  };
  const auto bwd = [&](void* w, size_t bytes, int64_t NH, int64_t KVH, int64_t HS, const float* qp) {
    cuda::attention_backward_gemm(blas, dq.as<float>(), dk.as<float>(), dv.as<float>(), dout.as<float>(),
                                  out.as<float>(), qp, k.as<float>(), v.as<float>(), lse.as<float>(), sh.B, sh.T, NH,
                                  KVH, HS, w, bytes, nullptr);
  };
  const float* qp = q.as<float>();
  for (int pass = 0; pass < 2; ++pass) {
    SCOPED_TRACE(pass == 0 ? "forward" : "backward");
    const auto call = [&](void* w, size_t bytes, int64_t NH, int64_t KVH, int64_t HS, const float* qq) {
      pass == 0 ? fwd(w, bytes, NH, KVH, HS, qq) : bwd(w, bytes, NH, KVH, HS, qq);
    };
    try {
      call(wsp, need - 1, sh.NH, sh.KVH, sh.HS, qp);
      ADD_FAILURE() << "a workspace of one byte less than the minimum was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(std::to_string(need)), std::string::npos) << e.what();
    }
    EXPECT_THROW(call(nullptr, need, sh.NH, sh.KVH, sh.HS, qp), Error) << "null workspace";
    EXPECT_THROW(call(wsp + 8, need, sh.NH, sh.KVH, sh.HS, qp), Error) << "misaligned workspace";
    EXPECT_THROW(call(wsp, need, 6, 4, sh.HS, qp), Error) << "6 heads over 4 KV heads";
    EXPECT_THROW(call(wsp, need, sh.NH, sh.KVH, 60, qp), Error) << "head size 60";
    EXPECT_THROW(call(wsp, need, sh.NH, sh.KVH, sh.HS, nullptr), Error) << "null q";
    EXPECT_NO_THROW(call(wsp, need, sh.NH, sh.KVH, sh.HS, qp)) << "the minimum itself";
  }
  EXPECT_THROW(cuda::attention_gemm_min_workspace(sh.T, 6, 4, sh.HS), Error);
  EXPECT_THROW(cuda::attention_gemm_good_workspace(sh.T, sh.NH, sh.KVH, 100), Error);
  ws.expect_guard_intact();  // a synchronizing copy: the accepted calls have finished
  cuda::check_last_error();
}

// The tensor-core flash kernels (attention_mma.h) round q, k, v, dout, P and dS to bf16 as the GEMM
// path does, so they are held to the same bounds against the fp64 twin (the derivation above; the
// forward rounds P relative to the running maximum instead of the final lse, a relative rounding
// all the same); every head size they are built for, sequences that end inside a 64-key tile, GQA
// groups of 1 to 6; bitwise identical on a second run into outputs that held zeros.
TEST(GpuAttentionMma, MatchesCpuTwin) {
  REQUIRE_GPU();
  for (const Shape& sh : {Shape{2, 1, 4, 2, 64}, Shape{2, 77, 6, 6, 32}, Shape{2, 65, 6, 1, 128},
                          Shape{2, 130, 12, 4, 64}, Shape{1, 257, 8, 2, 96}, Shape{2, 300, 12, 2, 128},
                          Shape{1, 512, 4, 4, 64}}) {
    SCOPED_TRACE(sh.str());
    const Inputs in = make_inputs(sh, uint32_t(sh.T + sh.HS + sh.NH));
    const Reference ref = cpu_reference(sh, in);
    const Results got = run_mma(sh, in);
    expect_within_bounds(sh, got, ref);
    expect_same_bits(got, run_mma(sh, in, 0.0f));
    {  // bf16 q, k, v in, bf16 out: the forward is the fp32-input one bit for bit (it rounds its
       // inputs to the same bf16 values), out rounded; the backward's D comes from the bf16 out
       // (one more rounding of relative 2^-9 in D: within the same bounds)
      SCOPED_TRACE("bf16 activations");
      const Results hb = run_mma_bf16(sh, in);
      EXPECT_TRUE(same_bits(hb.lse, got.lse)) << "lse";
      std::vector<float> rounded(got.out.size());
      for (size_t i = 0; i < rounded.size(); ++i) rounded[i] = bf16_to_f32(f32_to_bf16(got.out[i]));
      EXPECT_TRUE(same_bits(hb.out, rounded)) << "out";
      Results cmp = hb;
      cmp.out = got.out;  // the bounds' out is the fp32 one (checked above); dq, dk, dv are the bf16 run's
      expect_within_bounds(sh, cmp, ref);
    }
    if (sh.NH > sh.KVH) {  // each query head's share of dk, dv in the workspace, then summed over the group
      SCOPED_TRACE("a block per query head");
      const Results ph = run_mma(sh, in, std::numeric_limits<float>::quiet_NaN(), true);
      EXPECT_TRUE(same_bits(ph.out, got.out) && same_bits(ph.lse, got.lse) && same_bits(ph.dq, got.dq));
      expect_within_bounds(sh, ph, ref);
      expect_same_bits(ph, run_mma(sh, in, 0.0f, true));
    }
  }
  const float* none = nullptr;
  EXPECT_THROW(cuda::attention_forward_mma(nullptr, nullptr, none, none, none, 1, 8, 2, 1, 64, nullptr), Error);
  cuda::check_last_error();
}

// The forward's blocks of 64 queries (4 warps) and of 128 (8 warps) give every row the same key
// tiles in the same order (a block's rows below a tile see it masked: p = 0, the sums unchanged):
// the same bits, for sequences ending inside a block of either size; each size checked against the
// twin through MatchesCpuTwin's automatic choice too (64 at these sizes, 128 on the trainer's).
TEST(GpuAttentionMma, ForwardBlockSizesGiveTheSameBits) {
  REQUIRE_GPU();
  for (const Shape& sh : {Shape{2, 1, 4, 2, 64}, Shape{2, 65, 6, 1, 128}, Shape{2, 130, 12, 4, 64},
                          Shape{1, 257, 8, 2, 96}, Shape{2, 300, 12, 2, 128}, Shape{1, 512, 4, 4, 32}}) {
    SCOPED_TRACE(sh.str());
    const Inputs in = make_inputs(sh, uint32_t(sh.T + sh.HS + 3));
    ::setenv("PRIMAL_ATTN_ROWS", "64", 1);
    const Results a = run_mma_bf16(sh, in);
    ::setenv("PRIMAL_ATTN_ROWS", "128", 1);
    const Results b = run_mma_bf16(sh, in);
    ::unsetenv("PRIMAL_ATTN_ROWS");
    expect_same_bits(a, b);
    expect_within_bounds(sh, b, cpu_reference(sh, in));
  }
}

// dq's kernel on a second stream (as the trainer runs it, beside dk/dv's) gives the same bits as
// the backward on one stream: the kernels and their inputs are the same, only the overlap differs.
TEST(GpuAttentionMma, SideStreamGivesTheSameBits) {
  REQUIRE_GPU();
  for (const Shape& sh : {Shape{2, 130, 12, 4, 64}, Shape{3, 512, 8, 8, 64}, Shape{2, 257, 8, 2, 128}}) {
    SCOPED_TRACE(sh.str());
    const Inputs in = make_inputs(sh, uint32_t(sh.T + sh.HS));
    expect_same_bits(run_mma_bf16(sh, in, 2), run_mma_bf16(sh, in, 1));
  }
}

// The gradients asked as bf16 (the trainer's q, k, v backward operands: one matrix [dq | dk | dv],
// as column blocks) are the fp32 ones rounded, dq and dk first rotated back by RoPE's backward
// (rope_rotate, inverse, bf16 copy only) under either pair layout: bit for bit, from the dq kernel,
// the dk/dv kernel (no GQA, or GQA walking the group without a workspace for shares) and the group
// sums (GQA with shares); the fp32 buffers and the row padding untouched.
TEST(GpuAttentionMma, Bf16GradsAreTheRotatedRoundedFp32Ones) {
  REQUIRE_GPU();
  for (const Shape& sh : {Shape{2, 130, 12, 4, 64}, Shape{3, 512, 8, 8, 64}, Shape{2, 257, 8, 2, 128},
                          Shape{1, 77, 6, 1, 32}}) {
    SCOPED_TRACE(sh.str());
    const Inputs in = make_inputs(sh, uint32_t(sh.T + sh.HS + 5));
    const int64_t Q = sh.NH * sh.HS, KV = sh.KVH * sh.HS, rows = sh.B * sh.T;
    std::vector<double> inv_freq(size_t(sh.HS / 2));
    for (size_t i = 0; i < inv_freq.size(); ++i) inv_freq[i] = std::pow(10000.0, -2.0 * double(i) / double(sh.HS));
    const auto freq = to_device(inv_freq);
    auto table = guarded(size_t(sh.T * sh.HS));
    for (const int rope : {0, 1, 2}) {  // none, NeoX pairs, adjacent pairs
      for (const bool shares : {true, false}) {
        SCOPED_TRACE(std::string("rope ") + std::to_string(rope) + (shares ? " shares" : " no shares"));
        // (the GQA group's sums differ in order with and without shares: the same workspace for both)
        Grads16 g32;
        g32.shares = shares;
        const Results one = run_mma_bf16(sh, in, 1, &g32);
        cuda::RopeTrainParams p;
        p.head_dim = p.n_rot = sh.HS, p.neox = rope == 1, p.inv_freq = freq.as<double>();
        if (rope) cuda::rope_table(table.as<float>(), sh.T, p, nullptr);
        p.cos_sin = rope ? table.as<float>() : nullptr, p.table_len = rope ? sh.T : 0;
        // The expected bf16 values: the fp32 gradients through RoPE's backward (or a rounding).
        auto expect16 = [&](const std::vector<float>& x, int64_t heads) {
          std::vector<uint16_t> e(x.size());
          if (!rope) {
            for (size_t i = 0; i < x.size(); ++i) e[i] = f32_to_bf16(x[i]);
            return e;
          }
          auto xd = to_device(x);
          auto eb = to_device(std::vector<uint16_t>(x.size(), 0));
          cuda::rope_rotate(xd.as<float>(), sh.B, sh.T, heads, 0, p, true, nullptr, eb.as<uint16_t>(), false);
          return to_host<uint16_t>(eb, x.size());
        };
        const auto eq = expect16(one.dq, sh.NH), ek = expect16(one.dk, sh.KVH);
        std::vector<uint16_t> ev(one.dv.size());
        for (size_t i = 0; i < ev.size(); ++i) ev[i] = f32_to_bf16(one.dv[i]);
        Grads16 g;
        g.rope_cs = p.cos_sin, g.neox = p.neox, g.pad = shares ? 0 : 8, g.shares = shares;
        const Results r = run_mma_bf16(sh, in, 3, &g);
        EXPECT_TRUE(same_bits(r.out, one.out) && same_bits(r.lse, one.lse)) << "forward";
        for (const auto* f : {&r.dq, &r.dk, &r.dv})
          for (float x : *f) ASSERT_TRUE(std::isnan(x)) << "an fp32 gradient buffer was written";
        int64_t bad = 0;
        for (int64_t t = 0; t < rows; ++t) {
          const uint16_t* row = g.m.data() + t * g.ld;
          for (int64_t c = 0; c < Q; ++c) bad += row[c] != eq[size_t(t * Q + c)];
          for (int64_t c = 0; c < KV; ++c) bad += row[Q + c] != ek[size_t(t * KV + c)];
          for (int64_t c = 0; c < KV; ++c) bad += row[Q + KV + c] != ev[size_t(t * KV + c)];
          for (int64_t c = Q + 2 * KV; c < g.ld; ++c) bad += row[c] != 0xFFFF;
        }
        EXPECT_EQ(bad, 0) << "values differing from the rotated, rounded fp32 gradients (or padding written)";
      }
    }
  }
}

// dout given as bf16 (the trainer's o-projection input gradient straight out of its GEMM) gives
// bit for bit the fp32 overload's results for the same values: the kernels read the bf16 values
// that overload rounds its dout to, and D sums the same products in the same order. With fp32
// values that are not bf16 numbers the two differ (D from the unrounded dout), so the inputs' dout
// is rounded first; the unrounded run shows that the comparison can fail.
TEST(GpuAttentionMma, Bf16DoutIsTheFp32OverloadOnTheSameValues) {
  REQUIRE_GPU();
  for (const Shape& sh : {Shape{2, 130, 12, 4, 64}, Shape{2, 257, 8, 2, 128}, Shape{1, 77, 6, 1, 32}}) {
    SCOPED_TRACE(sh.str());
    Inputs in = make_inputs(sh, uint32_t(sh.T + sh.HS + 9));
    const Results raw = run_mma_bf16(sh, in, 1);
    for (float& x : in.dout) x = bf16_to_f32(f32_to_bf16(x));
    const Results f32 = run_mma_bf16(sh, in, 1), b16 = run_mma_bf16(sh, in, 4);
    expect_same_bits(b16, f32);
    EXPECT_FALSE(same_bits(raw.dq, f32.dq)) << "D from unrounded values should differ";
  }
}

namespace {

// cuDNN's fused attention (cudnn_attention.h) on the bf16 activations as the trainer calls it: q,
// k, v separate (B, T, heads, HS) matrices, out bf16, dout bf16, and dq, dk, dv into one (B T, ld)
// bf16 matrix [dq | dk | dv | pad] filled with 0xFFFF first (the padding must stay so); results
// widened to fp32. false where cuDNN has no engine for the shape.
bool run_cudnn(const Shape& sh, const Inputs& in, Results& r) {
  cuda::CudnnAttnShape cs;
  cs.B = sh.B, cs.T = sh.T, cs.NH = sh.NH, cs.KVH = sh.KVH, cs.HS = sh.HS;
  const int64_t Q = sh.NH * sh.HS, KV = sh.KVH * sh.HS, rows = sh.B * sh.T, pad = 8, ld = Q + 2 * KV + pad;
  cs.ldq = Q, cs.ldk = KV, cs.ldd = ld;
  const int64_t fw = cuda::cudnn_attention_forward_workspace(cs), bw = cuda::cudnn_attention_backward_workspace(cs);
  if (fw < 0 || bw < 0) return false;
  auto b16 = [](const std::vector<float>& v) {
    std::vector<uint16_t> b(v.size());
    for (size_t i = 0; i < v.size(); ++i) b[i] = f32_to_bf16(v[i]);
    return b;
  };
  const size_t nq = in.q.size(), nl = size_t(sh.B * sh.NH * sh.T);
  const auto q = to_device(b16(in.q)), k = to_device(b16(in.k)), v = to_device(b16(in.v));
  const auto dout = to_device(b16(in.dout));
  auto out = to_device(std::vector<uint16_t>(nq + 64, 0xFFFF));
  auto lse = guarded(nl);
  auto m16 = to_device(std::vector<uint16_t>(size_t(rows * ld), 0xFFFF));
  Workspace ws(size_t(std::max(fw, bw)));
  EXPECT_TRUE(cuda::cudnn_attention_forward(out.as<uint16_t>(), lse.as<float>(), q.as<uint16_t>(), k.as<uint16_t>(),
                                            v.as<uint16_t>(), cs, ws.buf.data(), ws.bytes, nullptr));
  uint16_t* base = m16.as<uint16_t>();
  EXPECT_TRUE(cuda::cudnn_attention_backward(base, base + Q, base + Q + KV, dout.as<uint16_t>(), out.as<uint16_t>(),
                                             q.as<uint16_t>(), k.as<uint16_t>(), v.as<uint16_t>(), lse.as<float>(), cs,
                                             ws.buf.data(), ws.bytes, nullptr));
  EXPECT_FALSE(cuda::cudnn_attention_backward(base, base + Q, base + Q + KV, dout.as<uint16_t>(), out.as<uint16_t>(),
                                              q.as<uint16_t>(), k.as<uint16_t>(), v.as<uint16_t>(), lse.as<float>(), cs,
                                              ws.buf.data(), size_t(bw) - 1, nullptr))
      << "a workspace one byte short";
  ws.expect_guard_intact();
  const auto ob = to_host<uint16_t>(out, nq + 64);
  for (size_t i = nq; i < ob.size(); ++i) EXPECT_EQ(ob[i], 0xFFFF) << "bf16 out written past its end";
  r.out.resize(nq);
  for (size_t i = 0; i < nq; ++i) r.out[i] = bf16_to_f32(ob[i]);
  r.lse = unguard(lse, nl, "lse");
  const auto m = to_host<uint16_t>(m16, size_t(rows * ld));
  r.dq.assign(nq, 0.0f), r.dk.assign(in.k.size(), 0.0f), r.dv.assign(in.k.size(), 0.0f);
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t c = 0; c < ld; ++c) {
      const uint16_t x = m[size_t(t * ld + c)];
      if (c < Q) r.dq[size_t(t * Q + c)] = bf16_to_f32(x);
      else if (c < Q + KV) r.dk[size_t(t * KV + c - Q)] = bf16_to_f32(x);
      else if (c < Q + 2 * KV) r.dv[size_t(t * KV + c - Q - KV)] = bf16_to_f32(x);
      else EXPECT_EQ(x, 0xFFFF) << "padding written at row " << t;
    }
  return true;
}

}  // namespace

// cuDNN's engines (where libcudnn.so.9 loads) are held to the flash kernels' bounds against the
// fp64 twin: they round q, k, v, dout, P and dS to bf16 as ours do, and out, dq, dk, dv once more
// (to bf16, a relative 2^-9 at most, well inside the bounds). The trainer's shapes (T a multiple of
// 64, HS 64 and 128, GQA groups of 1 to 6) must have an engine; others may be declined.
TEST(GpuAttentionCudnn, MatchesCpuTwin) {
  REQUIRE_GPU();
  if (!cuda::cudnn_attention_loaded()) GTEST_SKIP() << "libcudnn.so.9 not found (PRIMAL_CUDNN_LIB names it)";
  for (const Shape& sh : {Shape{2, 128, 4, 4, 64}, Shape{2, 256, 12, 2, 128}, Shape{1, 192, 6, 1, 128},
                          Shape{2, 77, 6, 6, 64}, Shape{1, 300, 12, 4, 128}}) {
    SCOPED_TRACE(sh.str());
    const Inputs in = make_inputs(sh, uint32_t(sh.T + sh.HS + sh.NH + 7));
    Results got;
    const bool ran = run_cudnn(sh, in, got);
    if (!ran) {
      EXPECT_NE(sh.T % 64, 0) << "cuDNN declined a trainer shape";
      continue;
    }
    expect_within_bounds(sh, got, cpu_reference(sh, in));
  }
  cuda::check_last_error();
}
