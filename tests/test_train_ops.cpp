// Backward ops of the trainer against central finite differences, in float64 on small shapes:
// every op (rmsnorm, rope, attention, swiglu, embedding, cross-entropy, dense and LUT linear)
// and the whole model (norms, biases, LUT scales, embeddings, head; GQA, qwen2 biases, tied
// head, shared layers). The LUT weight gradient handed to the votes tile by tile is checked
// against the finite-difference gradient of the same model with those weights held dense.
//
// Tolerances: a central difference with step h has truncation error h^2/6 |f'''|; with
// h = 1e-5 on fp64 values (rounding error ~1e-16 / h = 1e-11) the derivative is good to ~1e-9
// relative for these O(1) functions, checked at 1e-6. Parameters stored in fp32 are stepped by
// h = 1e-3 and the actual step float(x + h) - x is used; truncation then allows ~1e-6, checked
// at 1e-4.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <map>
#include <random>
#include <vector>

#include "ops/cpu/attention.h"
#include "core/error.h"
#include "ops/cpu/attention_backward.h"
#include "ops/cpu/cross_entropy_backward.h"
#include "ops/cpu/embedding_backward.h"
#include "ops/cpu/rmsnorm.h"
#include "ops/cpu/rmsnorm_backward.h"
#include "ops/cpu/rope_backward.h"
#include "ops/cpu/swiglu_backward.h"
#include "quant/lut_grid.h"
#include "train/forward_backward.h"
#include "train/linear.h"
#include "train/model.h"

using namespace primal;
using namespace primal::train;

namespace {

std::vector<double> randn(size_t n, uint32_t seed, double scale = 1.0) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> d(0.0, scale);
  std::vector<double> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}
std::vector<float> randnf(size_t n, uint32_t seed, double scale = 1.0, double mean = 0.0) {
  auto d = randn(n, seed, scale);
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = float(d[i] + mean);
  return v;
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// d f / d x[k] by central differences on an fp64 array.
double fd(std::vector<double>& x, size_t k, const std::function<double()>& f, double h = 1e-5) {
  const double x0 = x[k];
  x[k] = x0 + h;
  const double fp = f();
  x[k] = x0 - h;
  const double fm = f();
  x[k] = x0;
  return (fp - fm) / (2 * h);
}
// The same on an fp32-stored parameter, with the step actually taken.
double fd(std::vector<float>& x, size_t k, const std::function<double()>& f, double h = 1e-3) {
  const float x0 = x[k];
  x[k] = float(x0 + h);
  const double up = double(x[k]);
  const double fp = f();
  x[k] = float(x0 - h);
  const double dn = double(x[k]);
  const double fm = f();
  x[k] = x0;
  return (fp - fm) / (up - dn);
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::fabs(x));
  return m;
}

// Every element of an fp64 input against finite differences of f.
void check_all(const char* what, std::vector<double>& x, const std::vector<double>& grad,
               const std::function<double()>& f, double tol = 1e-6) {
  ASSERT_EQ(x.size(), grad.size()) << what;
  const double scale = std::max(1.0, max_abs(grad));
  for (size_t k = 0; k < x.size(); ++k) EXPECT_NEAR(grad[k], fd(x, k, f), tol * scale) << what << " [" << k << "]";
}
void check_all(const char* what, std::vector<float>& x, const std::vector<double>& grad,
               const std::function<double()>& f, double tol = 1e-4, size_t stride = 1) {
  ASSERT_EQ(x.size(), grad.size()) << what;
  const double scale = std::max(1.0, max_abs(grad));
  for (size_t k = 0; k < x.size(); k += stride) EXPECT_NEAR(grad[k], fd(x, k, f), tol * scale) << what << " [" << k << "]";
}

cpu::RopeParams rope_params(int64_t HS, int64_t n_rot, bool neox) {
  cpu::RopeParams p;
  p.head_dim = HS;
  p.n_rot = n_rot;
  p.neox = neox;
  p.inv_freq = cpu::rope_inv_freq(n_rot, 10000.0, 1.0, nullptr);
  return p;
}

}  // namespace

TEST(TrainOps, RmsNormBackwardMatchesFiniteDifferences) {
  const int64_t T = 3, C = 8;
  auto x = randn(size_t(T * C), 1);
  auto w = randnf(size_t(C), 2, 0.3, 1.0);
  const auto dy = randn(size_t(T * C), 3);
  std::vector<double> y(x.size()), r(static_cast<size_t>(T));
  auto loss = [&] {
    cpu::rmsnorm_forward_train(y.data(), r.data(), x.data(), w.data(), T, C, 1e-5f);
    return dot(y, dy);
  };
  loss();
  std::vector<double> dx(x.size(), 0.0), dw(size_t(C), 0.0);
  cpu::rmsnorm_backward(dx.data(), dw.data(), dy.data(), x.data(), w.data(), r.data(), T, C);
  check_all("dx", x, dx, loss);
  check_all("dw", w, dw, loss);
}

TEST(TrainOps, RmsNormForwardTrainEqualsInferenceForward) {
  const int64_t T = 4, C = 64;
  const auto x = randnf(size_t(T * C), 4);
  const auto w = randnf(size_t(C), 5, 0.2, 1.0);
  std::vector<float> a(x.size()), b(x.size()), r(static_cast<size_t>(T));
  cpu::rmsnorm_forward_train(a.data(), r.data(), x.data(), w.data(), T, C, 1e-5f);
  cpu::rmsnorm_forward(b.data(), x.data(), w.data(), T, C, 1e-5f);
  EXPECT_EQ(a, b);  // same formula, same fp32 operations
}

TEST(TrainOps, RopeBackwardMatchesFiniteDifferencesBothLayouts) {
  for (bool neox : {false, true}) {
    const int64_t T = 4, NH = 2, HS = 8;
    const auto p = rope_params(HS, 6, neox);  // partial rotary: dims 6, 7 pass through
    auto x = randn(size_t(T * NH * HS), 6);
    const auto dy = randn(x.size(), 7);
    auto loss = [&] {
      auto y = x;
      cpu::rope_forward_train(y.data(), T, NH, 3, p);
      return dot(y, dy);
    };
    auto dx = dy;
    cpu::rope_backward(dx.data(), T, NH, 3, p);
    check_all(neox ? "neox" : "pairs", x, dx, loss);
  }
}

TEST(TrainOps, AttentionBackwardMatchesFiniteDifferences) {
  const int64_t B = 2, T = 5, NH = 4, KVH = 2, HS = 6;
  auto q = randn(size_t(B * T * NH * HS), 8), k = randn(size_t(B * T * KVH * HS), 9),
       v = randn(size_t(B * T * KVH * HS), 10);
  const auto dy = randn(q.size(), 11);
  std::vector<double> out(q.size()), lse(size_t(B * NH * T));
  auto loss = [&] {
    cpu::attention_forward_train(out.data(), lse.data(), q.data(), k.data(), v.data(), B, T, NH, KVH, HS);
    return dot(out, dy);
  };
  loss();
  std::vector<double> dq(q.size()), dk(k.size()), dv(v.size());
  cpu::attention_backward(dq.data(), dk.data(), dv.data(), dy.data(), out.data(), q.data(), k.data(), v.data(),
                          lse.data(), B, T, NH, KVH, HS);
  check_all("dq", q, dq, loss);
  check_all("dk", k, dk, loss);
  check_all("dv", v, dv, loss);
}

TEST(TrainOps, AttentionForwardTrainMatchesInferenceAttention) {
  // Per sequence, the training forward equals the inference op over a cache holding that
  // sequence (fp32, different summation order: within a few ulps of the output scale).
  const int64_t B = 2, T = 40, NH = 4, KVH = 2, HS = 16;
  const auto q = randnf(size_t(B * T * NH * HS), 12), k = randnf(size_t(B * T * KVH * HS), 13),
             v = randnf(size_t(B * T * KVH * HS), 14);
  std::vector<float> a(q.size()), lse(size_t(B * NH * T)), b(q.size());
  cpu::attention_forward_train(a.data(), lse.data(), q.data(), k.data(), v.data(), B, T, NH, KVH, HS);
  for (int64_t s = 0; s < B; ++s)
    cpu::attention_forward(b.data() + s * T * NH * HS, q.data() + s * T * NH * HS, k.data() + s * T * KVH * HS,
                           v.data() + s * T * KVH * HS, T, 0, NH, KVH, HS);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-5) << i;
}

TEST(TrainOps, SwigluBackwardMatchesFiniteDifferences) {
  const int64_t N = 20;
  auto g = randn(size_t(N), 15, 2.0), u = randn(size_t(N), 16);
  const auto dy = randn(size_t(N), 17);
  auto loss = [&] {
    std::vector<double> y(static_cast<size_t>(N));
    cpu::swiglu_forward_train(y.data(), g.data(), u.data(), N);
    return dot(y, dy);
  };
  std::vector<double> dg(static_cast<size_t>(N)), du(static_cast<size_t>(N));
  cpu::swiglu_backward(dg.data(), du.data(), dy.data(), g.data(), u.data(), N);
  check_all("dgate", g, dg, loss);
  check_all("dup", u, du, loss);
}

TEST(TrainOps, EmbeddingBackwardSumsRepeatedTokens) {
  const int64_t V = 5, C = 3, T = 6;
  auto table = randnf(size_t(V * C), 18);
  const std::vector<int32_t> tok = {1, 3, 1, 0, 1, 4};
  const auto dy = randn(size_t(T * C), 19);
  auto loss = [&] {
    std::vector<double> y(static_cast<size_t>(T * C));
    cpu::embedding_forward_train(y.data(), tok.data(), T, table.data(), V, C);
    return dot(y, dy);
  };
  std::vector<double> dt(static_cast<size_t>(V * C), 0.0);
  cpu::embedding_backward(dt.data(), dy.data(), tok.data(), T, C);
  check_all("dtable", table, dt, loss);
  for (int64_t c = 0; c < C; ++c) EXPECT_EQ(dt[size_t(2 * C + c)], 0.0);  // id 2 never appears
  const std::vector<int32_t> bad = {5};
  std::vector<double> y(static_cast<size_t>(C));
  EXPECT_THROW(cpu::embedding_forward_train(y.data(), bad.data(), 1, table.data(), V, C), Error);
}

TEST(TrainOps, CrossEntropyBackwardMatchesFiniteDifferences) {
  const int64_t V = 9;
  auto x = randn(size_t(V), 20, 3.0);
  auto loss = [&] { return cpu::cross_entropy_row(x.data(), V, 4); };
  auto g = x;
  const double nll = cpu::cross_entropy_backward_row(g.data(), V, 4, 1.0);
  EXPECT_NEAR(nll, loss(), 1e-14);
  check_all("dlogits", x, g, loss);
  double sum = 0;
  for (double v : g) sum += v;
  EXPECT_NEAR(sum, 0.0, 1e-15);  // softmax sums to one, minus the one-hot
  auto h = x;
  EXPECT_EQ(cpu::cross_entropy_backward_row(h.data(), V, -1, 1.0), 0.0);  // unscored row
  for (double v : h) EXPECT_EQ(v, 0.0);
}

TEST(TrainOps, KlBackwardMatchesFiniteDifferencesAndIsCrossEntropyForOneHot) {
  const int64_t V = 9;
  auto x = randn(size_t(V), 21, 3.0);
  const auto t = randn(size_t(V), 22, 2.0);
  auto loss = [&] { return cpu::kl_row(x.data(), t.data(), V); };
  auto g = x;
  const double kl = cpu::kl_backward_row(g.data(), t.data(), V, 1.0);
  EXPECT_NEAR(kl, loss(), 1e-14);
  EXPECT_GT(kl, 0.0);
  check_all("dlogits", x, g, loss);
  EXPECT_NEAR(cpu::kl_row(x.data(), x.data(), V), 0.0, 1e-15);  // a model is its own teacher
  // A teacher with (nearly) all its mass on one token: the gradient of the cross-entropy.
  std::vector<double> hard(size_t(V), -1000.0);
  hard[3] = 0;
  auto gk = x, gc = x;
  cpu::kl_backward_row(gk.data(), hard.data(), V, 1.0);
  const double nll = cpu::cross_entropy_backward_row(gc.data(), V, 3, 1.0);
  EXPECT_NEAR(cpu::kl_row(x.data(), hard.data(), V), nll, 1e-12);
  for (int64_t i = 0; i < V; ++i) EXPECT_NEAR(gk[size_t(i)], gc[size_t(i)], 1e-15) << i;
}

namespace {

// Records the LUT gradient tiles as a dense (O, I) array.
struct CaptureSink : LutTileSink<double> {
  std::vector<double> dW;
  std::vector<std::pair<int64_t, int64_t>> tiles;
  int done_calls = 0;
  void tile(const Matrix& m, int64_t o0, int64_t rows, const double* g) override {
#pragma omp critical
    {
      if (dW.empty()) dW.assign(size_t(m.O * m.I), 0.0);
      for (int64_t k = 0; k < rows * m.I; ++k) dW[size_t(o0 * m.I + k)] += g[k];
      tiles.emplace_back(o0, rows);
    }
  }
  void done(const Matrix&) override { ++done_calls; }
};

Matrix lut_matrix(int64_t O, int64_t I, int64_t G, uint32_t seed) {
  const auto w = randnf(size_t(O * I), seed, 0.5);
  Matrix m;
  m.name = "test.weight";
  m.O = O;
  m.I = I;
  m.lut = std::make_shared<LutWeight>(quantize_to_lut(w.data(), O, I, DType::LUT4, G, iq4nl_grid(), "t"));
  return m;
}

Matrix as_dense(const Matrix& l) {
  Matrix d;
  d.name = l.name;
  d.O = l.O;
  d.I = l.I;
  d.dense.resize(size_t(l.O * l.I));
  l.rows(0, l.O, d.dense.data());
  return d;
}

}  // namespace

TEST(TrainOps, DenseLinearBackwardMatchesFiniteDifferences) {
  const int64_t N = 7, O = 5, I = 6;
  Matrix W;
  W.name = "dense";
  W.O = O;
  W.I = I;
  W.dense = randnf(size_t(O * I), 21);
  auto bias = randnf(size_t(O), 22);
  auto x = randn(size_t(N * I), 23);
  const auto dy = randn(size_t(N * O), 24);
  auto loss = [&] {
    std::vector<double> y(static_cast<size_t>(N * O));
    linear_forward(y.data(), x.data(), N, W, bias.data());
    return dot(y, dy);
  };
  std::vector<double> dx(x.size(), 0.0), dW(W.dense.size(), 0.0), db(size_t(O), 0.0);
  LinearGrad<double> g;
  g.dW = dW.data();
  g.dbias = db.data();
  linear_backward(dx.data(), false, dy.data(), x.data(), N, W, g);
  check_all("dx", x, dx, loss);
  check_all("dW", W.dense, dW, loss);
  check_all("dbias", bias, db, loss);
  // accumulate = true adds to what is there.
  std::vector<double> dx2(x.size(), 1.0);
  linear_backward(dx2.data(), true, dy.data(), x.data(), N, W, LinearGrad<double>{});
  for (size_t k = 0; k < dx.size(); ++k) EXPECT_NEAR(dx2[k], dx[k] + 1.0, 1e-14);
}

TEST(TrainOps, LutLinearBackwardScalesAndTilesMatchFiniteDifferences) {
  // O = 150 rows of I = 1024: tiles of 64 rows (the last one short), several scale groups a row.
  const int64_t N = 3, O = 150, I = 1024, G = 256;
  Matrix W = lut_matrix(O, I, G, 25);
  EXPECT_EQ(lut_tile_rows(I), 64);
  auto x = randn(size_t(N * I), 26);
  const auto dy = randn(size_t(N * O), 27);
  auto loss = [&] {
    std::vector<double> y(static_cast<size_t>(N * O));
    linear_forward(y.data(), x.data(), N, W, nullptr);
    return dot(y, dy);
  };
  std::vector<double> dx(x.size()), ds(W.lut->scale.size(), 0.0);
  CaptureSink sink;
  LinearGrad<double> g;
  g.dscale = ds.data();
  g.sink = &sink;
  linear_backward(dx.data(), false, dy.data(), x.data(), N, W, g);
  EXPECT_EQ(sink.tiles.size(), 3u);
  EXPECT_EQ(sink.done_calls, 1);
  check_all("dscale", W.lut->scale, ds, loss, 1e-4, 23);  // every row tile and group position
  // dx through the dequantized weights: the same as a dense matrix holding those values.
  Matrix D = as_dense(W);
  std::vector<double> dxd(x.size()), dWd(D.dense.size(), 0.0);
  LinearGrad<double> gd;
  gd.dW = dWd.data();
  linear_backward(dxd.data(), false, dy.data(), x.data(), N, D, gd);
  for (size_t k = 0; k < dx.size(); ++k) EXPECT_NEAR(dx[k], dxd[k], 1e-12) << k;
  // The tiles handed to the votes are the weight gradient.
  for (size_t k = 0; k < dWd.size(); k += 97) EXPECT_NEAR(sink.dW[k], dWd[k], 1e-12) << k;
  for (size_t k = 0; k < 20; ++k) {
    const size_t e = k * 7919 % D.dense.size();
    EXPECT_NEAR(sink.dW[e], fd(D.dense, e, [&] {
                  std::vector<double> y(static_cast<size_t>(N * O));
                  linear_forward(y.data(), x.data(), N, D, nullptr);
                  return dot(y, dy);
                }),
                1e-4 * std::max(1.0, max_abs(dWd)));
  }
}

namespace {

HParams tiny_hparams(bool bias, bool tied) {
  HParams hp;
  hp.arch = bias ? "qwen2" : "llama";
  hp.n_vocab = 11;
  hp.n_ctx_train = 64;
  hp.n_embd = 16;
  hp.n_layer = 2;
  hp.n_head = 4;
  hp.n_head_kv = 2;
  hp.head_dim = 4;
  hp.rope_dim = 4;
  hp.n_ff = 24;
  hp.rope_neox = bias;
  hp.qkv_bias = bias;
  hp.tied_embeddings = tied;
  return hp;
}

// A small model with O(1) weights (the default init is 0.02-scale) and non-trivial norms and biases.
TrainModel tiny_model(bool bias, bool tied, int64_t share) {
  LutSpec spec;
  spec.group = 8;
  TrainModel m = init_random_model(tiny_hparams(bias, tied), spec, share, 42);
  uint32_t seed = 100;
  auto perturb = [&](std::vector<float>& v, double s, double mean) {
    auto r = randnf(v.size(), seed++, s, mean);
    v = r;
  };
  perturb(m.tok_embd.dense, 1.0, 0);
  if (!tied) perturb(m.output.dense, 0.5, 0);
  perturb(m.output_norm, 0.2, 1.0);
  for (auto& l : m.layers) {
    perturb(l.attn_norm, 0.2, 1.0);
    perturb(l.ffn_norm, 0.2, 1.0);
    for (auto* b : {&l.bq, &l.bk, &l.bv})
      if (!b->empty()) perturb(*b, 0.3, 0);
    // Grids of quant/lut_grid are integers (iq4nl: -127 .. 113): rescaled to [-1, 1] (scales
    // taking the factor) so that the scales are O(1) and a finite-difference step of 1e-3 small.
    for (Matrix* mt : l.matrices()) {
      const float gmax = std::max(-mt->lut->grid.front(), mt->lut->grid.back());
      for (auto& g : mt->lut->grid) g /= gmax;
      for (auto& s : mt->lut->scale) s *= 20.0f * gmax;
    }
  }
  return m;
}

TrainMask all_trainable(const TrainModel& m) {
  TrainMask k;
  k.layer.assign(size_t(m.n_physical()), true);
  return k;
}

struct ModelCase {
  bool bias, tied;
  int64_t share;
};
void PrintTo(const ModelCase& c, std::ostream* os) {
  *os << "{bias " << c.bias << ", tied " << c.tied << ", share " << c.share << "}";
}

}  // namespace

class WholeModel : public ::testing::TestWithParam<ModelCase> {};

TEST_P(WholeModel, GradientsMatchFiniteDifferences) {
  const ModelCase c = GetParam();
  TrainModel m = tiny_model(c.bias, c.tied, c.share);
  const TrainMask mask = all_trainable(m);
  const int64_t B = 2, T = 5;
  const std::vector<int32_t> in = {1, 4, 2, 9, 0, 3, 3, 7, 10, 5};
  const std::vector<int32_t> tg = {4, 2, 9, 0, -1, 3, 7, 10, 5, 6};  // one unscored position
  Workspace<double> ws;
  auto loss = [&] { return forward_backward<double>(m, mask, ws, in.data(), tg.data(), B, T, 1.0, nullptr, nullptr).nll; };
  Grads<double> g;
  g.allocate(m, true, true);
  CaptureSink sink;
  const LossSum ls = forward_backward<double>(m, mask, ws, in.data(), tg.data(), B, T, 1.0, &g, &sink);
  EXPECT_EQ(ls.count, 9);
  EXPECT_NEAR(ls.nll, loss(), 1e-12);

  auto sample = [&](const char* what, std::vector<float>& p, const std::vector<double>& grad) {
    ASSERT_EQ(p.size(), grad.size()) << what;
    const double scale = std::max(1.0, max_abs(grad));
    for (size_t k = 0; k < p.size(); k += std::max<size_t>(1, p.size() / 7))
      EXPECT_NEAR(grad[k], fd(p, k, loss), 1e-4 * scale) << what << " [" << k << "]";
  };
  sample("tok_embd", m.tok_embd.dense, g.tok_embd.dW);
  if (!c.tied) sample("output", m.output.dense, g.output.dW);
  sample("output_norm", m.output_norm, g.output_norm);
  for (size_t p = 0; p < m.layers.size(); ++p) {
    TrainLayer& l = m.layers[p];
    LayerGrad<double>& lg = g.layers[p];
    sample("attn_norm", l.attn_norm, lg.attn_norm);
    sample("ffn_norm", l.ffn_norm, lg.ffn_norm);
    if (c.bias) {
      sample("bq", l.bq, lg.bq);
      sample("bk", l.bk, lg.bk);
      sample("bv", l.bv, lg.bv);
    }
    const auto mats = l.matrices();
    const auto gm = lg.matrices();
    for (size_t k = 0; k < mats.size(); ++k) sample(mats[k]->name.c_str(), mats[k]->lut->scale, gm[k]->dscale);
  }
}

TEST_P(WholeModel, LutTilesAreTheWeightGradient) {
  // The model with every LUT matrix replaced by a dense one holding the same values: its dense
  // gradient (checked by finite differences) equals what the LUT model hands to the votes.
  const ModelCase c = GetParam();
  TrainModel m = tiny_model(c.bias, c.tied, c.share);
  TrainModel d = tiny_model(c.bias, c.tied, c.share);
  for (auto& l : d.layers)
    for (Matrix* mt : l.matrices()) *mt = as_dense(*mt);
  const TrainMask mask = all_trainable(m);
  const int64_t B = 1, T = 6;
  const std::vector<int32_t> in = {1, 4, 2, 9, 0, 3}, tg = {4, 2, 9, 0, 3, 8};
  Workspace<double> ws;
  Grads<double> gl, gd;
  gl.allocate(m, true, true);
  gd.allocate(d, true, true);
  // One capture per matrix.
  struct PerMatrix : LutTileSink<double> {
    std::map<const Matrix*, std::vector<double>> dW;
    void tile(const Matrix& mt, int64_t o0, int64_t rows, const double* g) override {
#pragma omp critical
      {
        auto& v = dW[&mt];
        if (v.empty()) v.assign(size_t(mt.O * mt.I), 0.0);
        for (int64_t k = 0; k < rows * mt.I; ++k) v[size_t(o0 * mt.I + k)] += g[k];
      }
    }
  } sink;
  forward_backward<double>(m, mask, ws, in.data(), tg.data(), B, T, 1.0, &gl, &sink);
  forward_backward<double>(d, mask, ws, in.data(), tg.data(), B, T, 1.0, &gd, nullptr);
  auto loss = [&] { return forward_backward<double>(d, mask, ws, in.data(), tg.data(), B, T, 1.0, nullptr, nullptr).nll; };
  for (size_t p = 0; p < m.layers.size(); ++p) {
    const auto lm = m.layers[p].matrices();
    const auto dm = d.layers[p].matrices();
    const auto gm = gd.layers[p].matrices();
    for (size_t k = 0; k < lm.size(); ++k) {
      const auto& tiles = sink.dW[lm[k]];
      const auto& dense = gm[k]->dW;
      ASSERT_EQ(tiles.size(), dense.size()) << lm[k]->name;
      for (size_t e = 0; e < dense.size(); ++e) ASSERT_NEAR(tiles[e], dense[e], 1e-11) << lm[k]->name << " " << e;
      const double scale = std::max(1.0, max_abs(dense));
      for (size_t e = 0; e < dense.size(); e += dense.size() / 5)
        EXPECT_NEAR(dense[e], fd(dm[k]->dense, e, loss), 1e-4 * scale) << lm[k]->name << " [" << e << "]";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, WholeModel,
                         ::testing::Values(ModelCase{false, false, 0}, ModelCase{true, false, 0},
                                           ModelCase{false, true, 0}, ModelCase{false, false, 1}),
                         [](const auto& info) {
                           const ModelCase& c = info.param;
                           return std::string(c.bias ? "Qwen2Bias" : "Llama") + (c.tied ? "Tied" : "") +
                                  (c.share ? "Shared" : "");
                         });

TEST(TrainModelPass, DistillationGradientsMatchFiniteDifferencesOfTheKl) {
  // Student: the LUT tiny model; teacher: another model of the same vocabulary (other weights,
  // tied head). The loss is the KL summed over the scored positions.
  TrainModel m = tiny_model(false, false, 0);
  const TrainModel tm = tiny_model(true, true, 0);
  const TrainMask mask = all_trainable(m);
  const int64_t B = 2, T = 4;
  const std::vector<int32_t> in = {1, 4, 2, 9, 0, 3, 3, 7}, tg = {4, 2, 9, -1, 3, 3, 7, 10};
  Workspace<double> ws, tws;
  const Teacher<double> teacher{&tm, &tws};
  auto loss = [&] {
    return forward_backward<double>(m, mask, ws, in.data(), tg.data(), B, T, 1.0, nullptr, nullptr, &teacher).nll;
  };
  Grads<double> g;
  g.allocate(m, true, true);
  CaptureSink sink;
  const LossSum ls = forward_backward<double>(m, mask, ws, in.data(), tg.data(), B, T, 1.0, &g, &sink, &teacher);
  EXPECT_EQ(ls.count, 7);
  EXPECT_NEAR(ls.nll, loss(), 1e-12);
  EXPECT_GT(ls.nll, 0.0);
  auto sample = [&](const char* what, std::vector<float>& p, const std::vector<double>& grad) {
    const double scale = std::max(1.0, max_abs(grad));
    for (size_t k = 0; k < p.size(); k += std::max<size_t>(1, p.size() / 5))
      EXPECT_NEAR(grad[k], fd(p, k, loss), 1e-4 * scale) << what << " [" << k << "]";
  };
  sample("output", m.output.dense, g.output.dW);
  sample("output_norm", m.output_norm, g.output_norm);
  sample("attn_norm", m.layers[0].attn_norm, g.layers[0].attn_norm);
  sample("wq scales", m.layers[0].wq.lut->scale, g.layers[0].wq.dscale);
  sample("w_down scales", m.layers[1].w_down.lut->scale, g.layers[1].w_down.dscale);
  // A model distilled from itself has nothing to learn.
  Workspace<double> sws;
  const Teacher<double> self{&m, &sws};
  Grads<double> g0;
  g0.allocate(m, true, true);
  const LossSum l0 = forward_backward<double>(m, mask, ws, in.data(), tg.data(), B, T, 1.0, &g0, nullptr, &self);
  EXPECT_NEAR(l0.nll, 0.0, 1e-12);
  EXPECT_LT(max_abs(g0.output_norm), 1e-12);
  EXPECT_LT(max_abs(g0.layers[0].wq.dscale), 1e-12);
  // A teacher of another vocabulary is refused.
  TrainModel other = tiny_model(false, false, 0);
  other.hp.n_vocab += 1;
  const Teacher<double> bad{&other, &sws};
  EXPECT_THROW(forward_backward<double>(m, mask, ws, in.data(), tg.data(), B, T, 1.0, nullptr, nullptr, &bad), Error);
}

TEST(TrainModelPass, LutEmbeddingScaleGradientsMatchFiniteDifferences) {
  // Token embeddings (and the untied head) stored as LUT: their scales get gradients; the
  // embedding's through the rows the batch looks up (token 2 appears twice, 8 never).
  LutSpec spec;
  spec.group = 8;
  spec.quantize_embeddings = true;
  TrainModel m = init_random_model(tiny_hparams(false, false), spec, 0, 43);
  for (Matrix* mt : {&m.tok_embd, &m.output}) {
    const float gmax = std::max(-mt->lut->grid.front(), mt->lut->grid.back());
    for (auto& g : mt->lut->grid) g /= gmax;
    auto r = randnf(mt->lut->scale.size(), 7, 0.3, 1.0);
    for (size_t k = 0; k < r.size(); ++k) mt->lut->scale[k] = r[k];
  }
  const TrainMask mask = all_trainable(m);
  const std::vector<int32_t> in = {1, 2, 5, 2, 0, 3}, tg = {2, 5, 2, 0, 3, 9};
  Workspace<double> ws;
  auto loss = [&] { return forward_backward<double>(m, mask, ws, in.data(), tg.data(), 1, 6, 1.0, nullptr, nullptr).nll; };
  Grads<double> g;
  g.allocate(m, true, true);
  forward_backward<double>(m, mask, ws, in.data(), tg.data(), 1, 6, 1.0, &g, nullptr);
  const int64_t ng = m.tok_embd.lut->groups();
  const double scale = std::max(1.0, max_abs(g.tok_embd.dscale));
  for (int64_t r : {0, 1, 2, 3, 5, 8})
    for (int64_t k = 0; k < ng; ++k) {
      const size_t e = size_t(r * ng + k);
      EXPECT_NEAR(g.tok_embd.dscale[e], fd(m.tok_embd.lut->scale, e, loss), 1e-4 * scale) << "row " << r << " group " << k;
    }
  for (int64_t k = 0; k < ng; ++k) EXPECT_EQ(g.tok_embd.dscale[size_t(8 * ng + k)], 0.0);  // token 8 is not in the batch
  const double hs = std::max(1.0, max_abs(g.output.dscale));
  for (size_t e = 0; e < g.output.dscale.size(); e += 5)
    EXPECT_NEAR(g.output.dscale[e], fd(m.output.lut->scale, e, loss), 1e-4 * hs) << "head " << e;
}

TEST(TrainModelPass, FrozenLayersGetNoGradientAndTheLossIsUnchanged) {
  TrainModel m = tiny_model(false, false, 0);
  TrainMask mask = all_trainable(m);
  mask.embd = false;
  mask.layer = {false, true};  // the layer-peel cascade's first phase: only the top layer
  const std::vector<int32_t> in = {1, 4, 2, 9}, tg = {4, 2, 9, 0};
  Workspace<double> ws;
  Grads<double> g;
  g.allocate(m, true, true);
  CaptureSink sink;
  const LossSum a = forward_backward<double>(m, mask, ws, in.data(), tg.data(), 1, 4, 1.0, &g, &sink);
  const LossSum b = forward_backward<double>(m, mask, ws, in.data(), tg.data(), 1, 4, 1.0, nullptr, nullptr);
  EXPECT_EQ(a.nll, b.nll);
  EXPECT_EQ(sink.done_calls, 7);  // the 7 matrices of layer 1 only
  for (double v : g.layers[0].attn_norm) EXPECT_EQ(v, 0.0);
  for (double v : g.layers[0].wq.dscale) EXPECT_EQ(v, 0.0);
  for (double v : g.tok_embd.dW) EXPECT_EQ(v, 0.0);
  double s = 0;
  for (double v : g.layers[1].attn_norm) s += std::fabs(v);
  EXPECT_GT(s, 0.0);
}

TEST(TrainModelPass, FloatAndDoublePassesAgree) {
  // The fp32 pass the trainer runs against the fp64 pass of the same parameters.
  TrainModel m = tiny_model(false, false, 0);
  const TrainMask mask = all_trainable(m);
  const std::vector<int32_t> in = {1, 4, 2, 9, 0, 3, 3, 7}, tg = {4, 2, 9, 0, 3, 3, 7, 10};
  Workspace<double> wd;
  Workspace<float> wf;
  Grads<double> gd;
  Grads<float> gf;
  gd.allocate(m, true, true);
  gf.allocate(m, true, true);
  const double ld = forward_backward<double>(m, mask, wd, in.data(), tg.data(), 2, 4, 1.0, &gd, nullptr).nll;
  const double lf = forward_backward<float>(m, mask, wf, in.data(), tg.data(), 2, 4, 1.0, &gf, nullptr).nll;
  EXPECT_NEAR(lf, ld, 1e-4 * std::fabs(ld));
  const double scale = max_abs(gd.layers[0].wq.dscale);
  for (size_t k = 0; k < gd.layers[0].wq.dscale.size(); ++k)
    EXPECT_NEAR(gf.layers[0].wq.dscale[k], gd.layers[0].wq.dscale[k], 1e-3 * scale) << k;
}
