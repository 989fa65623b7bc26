// The whole forward pass on small random models held in memory, against a direct fp64
// implementation of the Llama / Qwen2 equations written here: tied and untied heads, q/k/v
// biases, GQA, both RoPE layouts, linear and llama3 scaling, partial rotary, F32/F16/Q8_0 weights.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/error.h"
#include "io/model_source.h"
#include "model/forward.h"
#include "ops/cpu/rope.h"
#include "quant/dequant.h"

using namespace primal;

namespace {

// A ModelSource whose tensors live in vectors owned by the source.
class MemorySource : public ModelSource {
 public:
  MemorySource(const HParams& hp, DType wtype, bool tied, bool bias, uint32_t seed) {
    path_ = "synthetic";
    hp_ = hp;
    std::mt19937 rng(seed);
    const int64_t C = hp.n_embd, Q = hp.n_head * hp.head_dim, KV = hp.n_embd_kv(), F = hp.n_ff, V = hp.n_vocab;
    auto mat = [&](const std::string& name, int64_t O, int64_t I, float scale) { add(name, wtype, {I, O}, scale, rng); };
    auto vec = [&](const std::string& name, int64_t n, float scale, float mean) {
      add(name, DType::F32, {n}, scale, rng, mean);
    };
    mat("token_embd.weight", V, C, 1.0f);
    if (!tied) mat("output.weight", V, C, 0.2f);
    vec("output_norm.weight", C, 0.1f, 1.0f);
    for (int64_t l = 0; l < hp.n_layer; ++l) {
      const std::string b = "blk." + std::to_string(l) + ".";
      vec(b + "attn_norm.weight", C, 0.1f, 1.0f);
      mat(b + "attn_q.weight", Q, C, 0.3f);
      mat(b + "attn_k.weight", KV, C, 0.3f);
      mat(b + "attn_v.weight", KV, C, 0.3f);
      if (bias) {
        vec(b + "attn_q.bias", Q, 0.2f, 0.0f);
        vec(b + "attn_k.bias", KV, 0.2f, 0.0f);
        vec(b + "attn_v.bias", KV, 0.2f, 0.0f);
      }
      mat(b + "attn_output.weight", C, Q, 0.2f);
      vec(b + "ffn_norm.weight", C, 0.1f, 1.0f);
      mat(b + "ffn_gate.weight", F, C, 0.3f);
      mat(b + "ffn_up.weight", F, C, 0.3f);
      mat(b + "ffn_down.weight", C, F, 0.2f);
    }
    finish();
  }

  // The values the forward sees (dequantized), by name: rows of ne[0] elements.
  std::vector<double> values(const std::string& name) const {
    const TensorRef& t = tensor(name);
    std::vector<float> f(size_t(t.nelements()));
    for (int64_t r = 0; r < t.nrows(); ++r) dequantize_tensor_row(t, r, f.data() + r * t.row_size());
    return std::vector<double>(f.begin(), f.end());
  }

 private:
  void add(const std::string& name, DType type, std::vector<int64_t> ne, float scale, std::mt19937& rng,
           float mean = 0.0f) {
    std::normal_distribution<float> d(mean, scale);
    int64_t n = 1;
    for (int64_t x : ne) n *= x;
    std::vector<float> src(static_cast<size_t>(n));
    for (auto& x : src) x = d(rng);
    const int64_t row = ne[0], rows = n / row;
    auto bytes = std::make_shared<std::vector<uint8_t>>(row_bytes(type, row) * size_t(rows));
    for (int64_t r = 0; r < rows; ++r)
      quantize_row(type, src.data() + r * row, bytes->data() + size_t(r) * row_bytes(type, row), row);
    keep_alive_.push_back(bytes);
    add_tensor(TensorRef{name, type, ne, bytes->data(), bytes->size()});
  }
};

// y = W x for W stored as O rows of I.
std::vector<double> mv(const std::vector<double>& W, const double* x, int64_t O, int64_t I) {
  std::vector<double> y(size_t(O), 0.0);
  for (int64_t o = 0; o < O; ++o)
    for (int64_t i = 0; i < I; ++i) y[size_t(o)] += W[size_t(o * I + i)] * x[i];
  return y;
}

std::vector<double> rmsnorm(const double* x, const std::vector<double>& w, int64_t C, double eps) {
  double ss = 0;
  for (int64_t c = 0; c < C; ++c) ss += x[c] * x[c];
  const double s = 1 / std::sqrt(ss / C + eps);
  std::vector<double> y(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) y[size_t(c)] = x[c] * s * w[size_t(c)];
  return y;
}

// Rotates one head vector in place at position p: pairs (2i, 2i+1) or halves (i, i + n_rot/2).
void rope(double* v, int64_t p, const HParams& hp, const std::vector<double>& divisor) {
  const int64_t half = hp.rope_dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    double freq = std::pow(double(hp.rope_theta), -2.0 * double(i) / double(hp.rope_dim)) / divisor[size_t(i)];
    if (hp.rope_scaling == RopeScaling::Linear) freq /= hp.rope_factor;
    const double a = double(p) * freq;
    const int64_t i0 = hp.rope_neox ? i : 2 * i, i1 = hp.rope_neox ? i + half : 2 * i + 1;
    const double x0 = v[i0], x1 = v[i1];
    v[i0] = x0 * std::cos(a) - x1 * std::sin(a);
    v[i1] = x0 * std::sin(a) + x1 * std::cos(a);
  }
}

// Logits (T, V) of every position, in fp64.
std::vector<double> reference_forward(const MemorySource& src, const std::vector<int32_t>& ids) {
  const HParams& hp = src.hparams();
  const int64_t T = int64_t(ids.size()), C = hp.n_embd, NH = hp.n_head, KVH = hp.n_head_kv, HS = hp.head_dim;
  const int64_t Q = NH * HS, KV = KVH * HS, F = hp.n_ff, V = hp.n_vocab;
  std::vector<double> divisor(size_t(hp.rope_dim / 2), 1.0);
  if (hp.rope_scaling == RopeScaling::Llama3) {
    const auto f = cpu::llama3_freq_factors(hp.rope_dim, hp.rope_theta, hp.rope_factor, hp.rope_low_freq_factor,
                                            hp.rope_high_freq_factor, double(hp.rope_orig_ctx));
    divisor.assign(f.begin(), f.end());
  }
  const auto emb = src.values("token_embd.weight");
  std::vector<double> x(size_t(T * C));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t c = 0; c < C; ++c) x[size_t(t * C + c)] = emb[size_t(ids[size_t(t)] * C + c)];
  for (int64_t l = 0; l < hp.n_layer; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    const auto wq = src.values(b + "attn_q.weight"), wk = src.values(b + "attn_k.weight"),
               wv = src.values(b + "attn_v.weight"), wo = src.values(b + "attn_output.weight");
    std::vector<double> bq(size_t(Q), 0.0), bk(size_t(KV), 0.0), bv(size_t(KV), 0.0);
    if (hp.qkv_bias) {
      bq = src.values(b + "attn_q.bias");
      bk = src.values(b + "attn_k.bias");
      bv = src.values(b + "attn_v.bias");
    }
    std::vector<double> q(size_t(T * Q)), k(size_t(T * KV)), v(size_t(T * KV));
    for (int64_t t = 0; t < T; ++t) {
      const auto xn = rmsnorm(&x[size_t(t * C)], src.values(b + "attn_norm.weight"), C, hp.rms_eps);
      const auto qt = mv(wq, xn.data(), Q, C), kt = mv(wk, xn.data(), KV, C), vt = mv(wv, xn.data(), KV, C);
      for (int64_t i = 0; i < Q; ++i) q[size_t(t * Q + i)] = qt[size_t(i)] + bq[size_t(i)];
      for (int64_t i = 0; i < KV; ++i) {
        k[size_t(t * KV + i)] = kt[size_t(i)] + bk[size_t(i)];
        v[size_t(t * KV + i)] = vt[size_t(i)] + bv[size_t(i)];
      }
      for (int64_t h = 0; h < NH; ++h) rope(&q[size_t(t * Q + h * HS)], t, hp, divisor);
      for (int64_t h = 0; h < KVH; ++h) rope(&k[size_t(t * KV + h * HS)], t, hp, divisor);
    }
    for (int64_t t = 0; t < T; ++t) {
      std::vector<double> att(size_t(Q), 0.0);
      for (int64_t h = 0; h < NH; ++h) {
        const int64_t g = h / (NH / KVH);
        std::vector<double> s(size_t(t + 1));
        double mx = -1e300, z = 0;
        for (int64_t j = 0; j <= t; ++j) {
          double d = 0;
          for (int64_t e = 0; e < HS; ++e) d += q[size_t(t * Q + h * HS + e)] * k[size_t(j * KV + g * HS + e)];
          mx = std::max(mx, s[size_t(j)] = d / std::sqrt(double(HS)));
        }
        for (auto& e : s) z += (e = std::exp(e - mx));
        for (int64_t j = 0; j <= t; ++j)
          for (int64_t e = 0; e < HS; ++e) att[size_t(h * HS + e)] += s[size_t(j)] / z * v[size_t(j * KV + g * HS + e)];
      }
      const auto o = mv(wo, att.data(), C, Q);
      for (int64_t c = 0; c < C; ++c) x[size_t(t * C + c)] += o[size_t(c)];
    }
    const auto wg = src.values(b + "ffn_gate.weight"), wu = src.values(b + "ffn_up.weight"),
               wd = src.values(b + "ffn_down.weight");
    for (int64_t t = 0; t < T; ++t) {
      const auto xn = rmsnorm(&x[size_t(t * C)], src.values(b + "ffn_norm.weight"), C, hp.rms_eps);
      const auto g = mv(wg, xn.data(), F, C), u = mv(wu, xn.data(), F, C);
      std::vector<double> h(static_cast<size_t>(F));
      for (int64_t i = 0; i < F; ++i) h[size_t(i)] = g[size_t(i)] / (1 + std::exp(-g[size_t(i)])) * u[size_t(i)];
      const auto d = mv(wd, h.data(), C, F);
      for (int64_t c = 0; c < C; ++c) x[size_t(t * C + c)] += d[size_t(c)];
    }
  }
  const auto head = src.values(hp.tied_embeddings ? "token_embd.weight" : "output.weight");
  std::vector<double> logits(size_t(T * V));
  for (int64_t t = 0; t < T; ++t) {
    const auto xn = rmsnorm(&x[size_t(t * C)], src.values("output_norm.weight"), C, hp.rms_eps);
    const auto lt = mv(head, xn.data(), V, C);
    std::copy(lt.begin(), lt.end(), logits.begin() + t * V);
  }
  return logits;
}

HParams small_hparams() {
  HParams hp;
  hp.n_vocab = 61;
  hp.n_embd = 64;
  hp.n_layer = 2;
  hp.n_head = 4;
  hp.n_head_kv = 2;
  hp.head_dim = 16;
  hp.rope_dim = 16;
  hp.n_ff = 96;
  hp.n_ctx_train = 64;
  hp.rms_eps = 1e-6f;
  return hp;
}

void check(const HParams& hp, DType wtype, bool tied, bool bias, uint32_t seed) {
  MemorySource src(hp, wtype, tied, bias, seed);
  ASSERT_EQ(src.hparams().tied_embeddings, tied);
  ASSERT_EQ(src.hparams().qkv_bias, bias);
  const LlamaWeights w = load_weights(src);
  // 37 tokens: the prefill takes the sgemm attention path, the decode the row loops.
  std::vector<int32_t> ids = {3, 60, 17, 17, 0, 42, 5, 33, 12, 9, 58};
  for (int32_t i = 0; ids.size() < 37; ++i) ids.push_back((i * 29 + 7) % int32_t(hp.n_vocab));
  const int64_t T = int64_t(ids.size()), V = hp.n_vocab;
  const auto want = reference_forward(src, ids);
  double scale = 0;
  for (double v : want) scale = std::max(scale, std::fabs(v));
  // Prefill of all positions at once, then the same tokens decoded one at a time.
  KVCache cache = make_kv_cache(w, 64);
  std::vector<float> got(size_t(T * V));
  llama_forward(w, cache, ids.data(), T, T, got.data());
  KVCache inc = make_kv_cache(w, 64);
  std::vector<float> step(static_cast<size_t>(V));
  for (int64_t t = 0; t < T; ++t) {
    llama_forward(w, inc, &ids[size_t(t)], 1, 1, step.data());
    for (int64_t i = 0; i < V; ++i) {
      // fp32 through two layers of width <= 96: relative error ~1e-6 of the logit scale
      ASSERT_NEAR(got[size_t(t * V + i)], want[size_t(t * V + i)], 2e-5 * scale) << "prefill t=" << t << " i=" << i;
      ASSERT_NEAR(step[size_t(i)], want[size_t(t * V + i)], 2e-5 * scale) << "decode t=" << t << " i=" << i;
    }
  }
}

}  // namespace

TEST(ForwardSynthetic, LlamaPairsRopeUntiedF32) { check(small_hparams(), DType::F32, false, false, 1); }

TEST(ForwardSynthetic, Qwen2NeoxTiedWithQkvBias) {
  HParams hp = small_hparams();
  hp.arch = "qwen2";
  hp.rope_neox = true;
  hp.rope_theta = 1000000.0f;
  check(hp, DType::F32, true, true, 2);
}

TEST(ForwardSynthetic, LinearScalingPartialRotaryF16) {
  HParams hp = small_hparams();
  hp.rope_scaling = RopeScaling::Linear;
  hp.rope_factor = 4.0f;
  hp.rope_dim = 8;  // only the first 8 of 16 dimensions rotate
  check(hp, DType::F16, false, false, 3);
}

TEST(ForwardSynthetic, Llama3ScalingQ8_0NoGqa) {
  HParams hp = small_hparams();
  hp.n_head_kv = 4;
  hp.rope_theta = 500000.0f;
  hp.rope_scaling = RopeScaling::Llama3;
  hp.rope_factor = 8.0f;
  hp.rope_low_freq_factor = 1.0f;
  hp.rope_high_freq_factor = 4.0f;
  hp.rope_orig_ctx = 16;  // small, so that all three bands occur among 8 frequencies
  check(hp, DType::Q8_0, false, false, 4);
}

TEST(ForwardSynthetic, YarnScalingIsRefusedClearly) {
  HParams hp = small_hparams();
  hp.rope_scaling = RopeScaling::Yarn;
  MemorySource src(hp, DType::F32, false, false, 5);
  EXPECT_THROW(load_weights(src), Error);
}

TEST(ForwardSynthetic, NullLogitsStopsAfterTheFinalNorm) {
  // The quantizer's calibration wants the head's input only: with logits null the pass dumps
  // result_norm exactly as a full pass does, skips the head (no result_output), and the cache
  // advances as usual.
  const HParams hp = small_hparams();
  MemorySource src(hp, DType::F32, false, false, 5);
  const LlamaWeights w = load_weights(src);
  std::vector<int32_t> ids;
  for (int32_t i = 0; i < 9; ++i) ids.push_back((i * 13 + 2) % int32_t(hp.n_vocab));
  const int64_t T = int64_t(ids.size());
  auto run = [&](bool with_logits, std::vector<float>& norm, bool& saw_output, int64_t& n_past) {
    KVCache cache = make_kv_cache(w, 64);
    std::vector<float> logits(size_t(T * hp.n_vocab));
    saw_output = false;
    llama_forward(w, cache, ids.data(), T, T, with_logits ? logits.data() : nullptr,
                  [&](const std::string& name, const float* data, const std::vector<int64_t>& shape) {
                    if (name == "result_norm") norm.assign(data, data + shape[0] * shape[1]);
                    if (name == "result_output") saw_output = true;
                  });
    n_past = cache.n_past();
  };
  std::vector<float> full, head_only;
  bool out_full = false, out_head_only = true;
  int64_t past_full = 0, past_head_only = 0;
  run(true, full, out_full, past_full);
  run(false, head_only, out_head_only, past_head_only);
  EXPECT_TRUE(out_full);
  EXPECT_FALSE(out_head_only);
  ASSERT_EQ(full.size(), size_t(T * hp.n_embd));
  EXPECT_EQ(full, head_only);
  EXPECT_EQ(past_full, T);
  EXPECT_EQ(past_head_only, T);
}
