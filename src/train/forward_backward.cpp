#include "train/forward_backward.h"

#include <algorithm>

#include "core/error.h"
#include "ops/cpu/attention_backward.h"
#include "ops/cpu/cross_entropy_backward.h"
#include "ops/cpu/embedding_backward.h"
#include "ops/cpu/rmsnorm_backward.h"
#include "ops/cpu/rope_backward.h"
#include "ops/cpu/swiglu_backward.h"

namespace primal::train {

template <class F>
void Workspace<F>::resize(const HParams& hp, int64_t b, int64_t t) {
  if (b == B && t == T && !res.empty()) return;
  B = b;
  T = t;
  const size_t N = size_t(B * T), C = size_t(hp.n_embd), Q = size_t(hp.n_head * hp.head_dim),
               KV = size_t(hp.n_embd_kv()), FF = size_t(hp.n_ff), L = size_t(hp.n_layer);
  res.assign(L + 1, std::vector<F>(N * C));
  layers.assign(L, Layer{});
  for (Layer& a : layers) {
    a.xn1.resize(N * C), a.rstd1.resize(N);
    a.q.resize(N * Q), a.k.resize(N * KV), a.v.resize(N * KV);
    a.att.resize(N * Q), a.lse.resize(size_t(B * hp.n_head * T));
    a.mid.resize(N * C), a.xn2.resize(N * C), a.rstd2.resize(N);
    a.gate.resize(N * FF), a.up.resize(N * FF), a.h.resize(N * FF);
  }
  xnf.resize(N * C), rstdf.resize(N);
  dx.resize(N * C), dxn.resize(N * C), dxnf.resize(N * C);
  dq.resize(N * Q), datt.resize(N * Q), dk.resize(N * KV), dv.resize(N * KV);
  dgate.resize(N * FF), dup.resize(N * FF), dh.resize(N * FF);
  logits.resize(size_t(kHeadChunk * hp.n_vocab));
  xchunk.resize(size_t(kHeadChunk) * C), dxchunk.resize(size_t(kHeadChunk) * C);
  nll.resize(size_t(kHeadChunk));
}

template <class F>
size_t Workspace<F>::bytes() const {
  size_t n = 0;
  auto add = [&](const std::vector<F>& v) { n += v.size() * sizeof(F); };
  for (const auto& r : res) add(r);
  for (const Layer& a : layers)
    for (const auto* v : {&a.xn1, &a.rstd1, &a.q, &a.k, &a.v, &a.att, &a.lse, &a.mid, &a.xn2, &a.rstd2, &a.gate,
                          &a.up, &a.h})
      add(*v);
  for (const auto* v : {&xnf, &rstdf, &dx, &dxn, &dxnf, &dq, &datt, &dk, &dv, &dgate, &dup, &dh, &logits, &xchunk,
                        &dxchunk})
    add(*v);
  return n;
}

namespace {

const float* opt(const std::vector<float>& v) { return v.empty() ? nullptr : v.data(); }
template <class F>
F* opt(std::vector<F>& v) {
  return v.empty() ? nullptr : v.data();
}

template <class F>
LinearGrad<F> grad_of(const Matrix& W, MatGrad<F>& g, F* dbias, bool trainable, bool scales, LutTileSink<F>* sink) {
  LinearGrad<F> r;
  if (!trainable) return r;
  if (W.is_lut()) {
    if (scales) r.dscale = opt(g.dscale);
    r.sink = sink;
  } else {
    r.dW = opt(g.dW);
  }
  r.dbias = dbias;
  return r;
}

// Embeddings, then every layer; leaves the residual stream in ws.res and the activations.
template <class F>
void forward_layers(const TrainModel& m, Workspace<F>& ws, const int32_t* inputs, int64_t B, int64_t T) {
  const HParams& hp = m.hp;
  const int64_t C = hp.n_embd, NH = hp.n_head, KVH = hp.n_head_kv, HS = hp.head_dim;
  const int64_t Q = NH * HS, KV = KVH * HS, FF = hp.n_ff, V = hp.n_vocab, N = B * T;
  ws.resize(hp, B, T);
  if (m.tok_embd.is_lut()) {
    for (int64_t t = 0; t < N; ++t) {
      PRIMAL_CHECK(inputs[t] >= 0 && inputs[t] < V, "token id {} at position {} is outside the vocabulary (0..{})",
                   inputs[t], t, V - 1);
      m.tok_embd.rows(inputs[t], 1, ws.res[0].data() + t * C);
    }
  } else {
    cpu::embedding_forward_train(ws.res[0].data(), inputs, N, m.tok_embd.dense.data(), V, C);
  }
  for (int64_t l = 0; l < hp.n_layer; ++l) {
    const TrainLayer& w = m.layers[size_t(m.layer_of[size_t(l)])];
    auto& a = ws.layers[size_t(l)];
    const F* x = ws.res[size_t(l)].data();
    cpu::rmsnorm_forward_train(a.xn1.data(), a.rstd1.data(), x, w.attn_norm.data(), N, C, hp.rms_eps);
    linear_forward(a.q.data(), a.xn1.data(), N, w.wq, opt(w.bq));
    linear_forward(a.k.data(), a.xn1.data(), N, w.wk, opt(w.bk));
    linear_forward(a.v.data(), a.xn1.data(), N, w.wv, opt(w.bv));
    for (int64_t b = 0; b < B; ++b) {
      cpu::rope_forward_train(a.q.data() + b * T * Q, T, NH, 0, m.rope);
      cpu::rope_forward_train(a.k.data() + b * T * KV, T, KVH, 0, m.rope);
    }
    cpu::attention_forward_train(a.att.data(), a.lse.data(), a.q.data(), a.k.data(), a.v.data(), B, T, NH, KVH, HS);
    linear_forward(a.mid.data(), a.att.data(), N, w.wo, nullptr);
    for (int64_t i = 0; i < N * C; ++i) a.mid[size_t(i)] += x[i];
    cpu::rmsnorm_forward_train(a.xn2.data(), a.rstd2.data(), a.mid.data(), w.ffn_norm.data(), N, C, hp.rms_eps);
    linear_forward(a.gate.data(), a.xn2.data(), N, w.w_gate, nullptr);
    linear_forward(a.up.data(), a.xn2.data(), N, w.w_up, nullptr);
    cpu::swiglu_forward_train(a.h.data(), a.gate.data(), a.up.data(), N * FF);
    F* out = ws.res[size_t(l + 1)].data();
    linear_forward(out, a.h.data(), N, w.w_down, nullptr);
    for (int64_t i = 0; i < N * C; ++i) out[i] += a.mid[size_t(i)];
  }
  cpu::rmsnorm_forward_train(ws.xnf.data(), ws.rstdf.data(), ws.res[size_t(hp.n_layer)].data(), m.output_norm.data(),
                             N, C, hp.rms_eps);
}

}  // namespace

int64_t lowest_backward_layer(const TrainModel& m, const TrainMask& mask, bool embd_grad) {
  const int64_t L = m.hp.n_layer;
  if (embd_grad) return 0;
  for (int64_t l = 0; l < L; ++l)
    if (mask.layer[size_t(m.layer_of[size_t(l)])]) return l;
  return L;
}

template <class F>
LossSum forward_backward(const TrainModel& m, const TrainMask& mask, Workspace<F>& ws, const int32_t* inputs,
                         const int32_t* targets, int64_t B, int64_t T, double loss_scale, Grads<F>* grads,
                         LutTileSink<F>* sink, const Teacher<F>* teacher) {
  const HParams& hp = m.hp;
  const int64_t C = hp.n_embd, NH = hp.n_head, KVH = hp.n_head_kv, HS = hp.head_dim;
  const int64_t Q = NH * HS, KV = KVH * HS, FF = hp.n_ff, V = hp.n_vocab, N = B * T, L = hp.n_layer;
  PRIMAL_CHECK(B > 0 && T > 0, "forward: empty batch ({} x {})", B, T);
  PRIMAL_CHECK(!grads || int64_t(mask.layer.size()) == m.n_physical(), "forward: mask of {} layers for {}",
               mask.layer.size(), m.n_physical());
  if (teacher) {
    PRIMAL_CHECK(teacher->model->hp.n_vocab == V, "the teacher's vocabulary ({}) differs from the model's ({})",
                 teacher->model->hp.n_vocab, V);
    forward_layers(*teacher->model, *teacher->ws, inputs, B, T);
  }
  forward_layers(m, ws, inputs, B, T);

  // Head + cross-entropy, a chunk of rows at a time; with grads, the head's backward at once.
  const Matrix& head = m.head();
  const bool tied = hp.tied_embeddings;
  LinearGrad<F> head_grad;
  if (grads)
    head_grad = grad_of(head, tied ? grads->tok_embd : grads->output, (F*)nullptr, mask.head, mask.scales, sink);
  // Only scored rows (target >= 0) go through the head: evaluation windows score half of theirs.
  std::vector<int64_t> rows;
  rows.reserve(size_t(N));
  for (int64_t r = 0; r < N; ++r)
    if (targets[r] >= 0) rows.push_back(r);
  const bool all = int64_t(rows.size()) == N;
  if (grads && !all) std::fill(ws.dxnf.begin(), ws.dxnf.end(), F(0));
  LossSum loss;
  for (int64_t c0 = 0; c0 < int64_t(rows.size()); c0 += kHeadChunk) {
    const int64_t n = std::min<int64_t>(kHeadChunk, int64_t(rows.size()) - c0);
    const F* x = ws.xnf.data() + c0 * C;
    F* dxr = ws.dxnf.data() + c0 * C;
    if (!all) {
      for (int64_t r = 0; r < n; ++r)
        std::copy_n(ws.xnf.data() + rows[size_t(c0 + r)] * C, C, ws.xchunk.data() + r * C);
      x = ws.xchunk.data();
      dxr = ws.dxchunk.data();
    }
    linear_forward(ws.logits.data(), x, n, head, nullptr);
    if (teacher) {
      Workspace<F>& tw = *teacher->ws;
      const int64_t TC = teacher->model->hp.n_embd;
      const F* xt = tw.xnf.data() + c0 * TC;
      if (!all) {
        for (int64_t r = 0; r < n; ++r)
          std::copy_n(tw.xnf.data() + rows[size_t(c0 + r)] * TC, TC, tw.xchunk.data() + r * TC);
        xt = tw.xchunk.data();
      }
      linear_forward(tw.logits.data(), xt, n, teacher->model->head(), nullptr);
    }
#pragma omp parallel for schedule(static) if (n * V >= (1 << 18))
    for (int64_t r = 0; r < n; ++r) {
      F* row = ws.logits.data() + r * V;
      if (teacher) {
        const F* trow = teacher->ws->logits.data() + r * V;
        ws.nll[size_t(r)] = grads ? cpu::kl_backward_row(row, trow, V, loss_scale) : cpu::kl_row(row, trow, V);
        continue;
      }
      const int32_t y = targets[rows[size_t(c0 + r)]];
      ws.nll[size_t(r)] = grads ? cpu::cross_entropy_backward_row(row, V, y, loss_scale) : cpu::cross_entropy_row(row, V, y);
    }
    for (int64_t r = 0; r < n; ++r) loss.nll += ws.nll[size_t(r)];
    loss.count += n;
    if (grads) {
      linear_backward(dxr, false, ws.logits.data(), x, n, head, head_grad);
      if (!all)
        for (int64_t r = 0; r < n; ++r)
          std::copy_n(ws.dxchunk.data() + r * C, C, ws.dxnf.data() + rows[size_t(c0 + r)] * C);
    }
  }
  if (!grads) return loss;

  // The lowest logical layer the gradient must reach.
  const bool embd_grad = mask.embd && !m.tok_embd.is_lut() && !grads->tok_embd.dW.empty();
  // LUT embeddings train their scales (their indices get no votes: a row's gradient is sparse).
  const bool embd_scale_grad = mask.embd && mask.scales && m.tok_embd.is_lut() && !grads->tok_embd.dscale.empty();
  const int64_t lowest = lowest_backward_layer(m, mask, embd_grad || embd_scale_grad);

  std::fill(ws.dx.begin(), ws.dx.end(), F(0));
  cpu::rmsnorm_backward(ws.dx.data(), mask.out_norm ? grads->output_norm.data() : nullptr, ws.dxnf.data(),
                        ws.res[size_t(L)].data(), m.output_norm.data(), ws.rstdf.data(), N, C);
  for (int64_t l = L - 1; l >= lowest; --l) {
    const int64_t p = m.layer_of[size_t(l)];
    const TrainLayer& w = m.layers[size_t(p)];
    LayerGrad<F>& g = grads->layers[size_t(p)];
    const bool tr = mask.layer[size_t(p)], sc = mask.scales;
    auto& a = ws.layers[size_t(l)];
    F* dx = ws.dx.data();
    // FFN: res[l+1] = mid + W_down (silu(W_gate xn2) * (W_up xn2))
    linear_backward(ws.dh.data(), false, dx, a.h.data(), N, w.w_down, grad_of(w.w_down, g.w_down, (F*)nullptr, tr, sc, sink));
    cpu::swiglu_backward(ws.dgate.data(), ws.dup.data(), ws.dh.data(), a.gate.data(), a.up.data(), N * FF);
    linear_backward(ws.dxn.data(), false, ws.dgate.data(), a.xn2.data(), N, w.w_gate,
                    grad_of(w.w_gate, g.w_gate, (F*)nullptr, tr, sc, sink));
    linear_backward(ws.dxn.data(), true, ws.dup.data(), a.xn2.data(), N, w.w_up,
                    grad_of(w.w_up, g.w_up, (F*)nullptr, tr, sc, sink));
    cpu::rmsnorm_backward(dx, tr ? g.ffn_norm.data() : nullptr, ws.dxn.data(), a.mid.data(), w.ffn_norm.data(),
                          a.rstd2.data(), N, C);
    // Attention: mid = res[l] + W_o attn(rope(W_q xn1), rope(W_k xn1), W_v xn1)
    linear_backward(ws.datt.data(), false, dx, a.att.data(), N, w.wo, grad_of(w.wo, g.wo, (F*)nullptr, tr, sc, sink));
    cpu::attention_backward(ws.dq.data(), ws.dk.data(), ws.dv.data(), ws.datt.data(), a.att.data(), a.q.data(),
                            a.k.data(), a.v.data(), a.lse.data(), B, T, NH, KVH, HS);
    for (int64_t b = 0; b < B; ++b) {
      cpu::rope_backward(ws.dq.data() + b * T * Q, T, NH, 0, m.rope);
      cpu::rope_backward(ws.dk.data() + b * T * KV, T, KVH, 0, m.rope);
    }
    linear_backward(ws.dxn.data(), false, ws.dq.data(), a.xn1.data(), N, w.wq,
                    grad_of(w.wq, g.wq, tr ? opt(g.bq) : nullptr, tr, sc, sink));
    linear_backward(ws.dxn.data(), true, ws.dk.data(), a.xn1.data(), N, w.wk,
                    grad_of(w.wk, g.wk, tr ? opt(g.bk) : nullptr, tr, sc, sink));
    linear_backward(ws.dxn.data(), true, ws.dv.data(), a.xn1.data(), N, w.wv,
                    grad_of(w.wv, g.wv, tr ? opt(g.bv) : nullptr, tr, sc, sink));
    cpu::rmsnorm_backward(dx, tr ? g.attn_norm.data() : nullptr, ws.dxn.data(), ws.res[size_t(l)].data(),
                          w.attn_norm.data(), a.rstd1.data(), N, C);
  }
  if (embd_grad) cpu::embedding_backward(grads->tok_embd.dW.data(), ws.dx.data(), inputs, N, C);
  if (embd_scale_grad) {
    // dscale[r, g] += sum over positions t of token r of sum_{i in g} dx[t, i] grid[idx[r, i]],
    // positions in order (the same sum on any thread count).
    const LutWeight& E = *m.tok_embd.lut;
    const int64_t ng = E.groups();
    F* ds = grads->tok_embd.dscale.data();
    for (int64_t t = 0; t < N; ++t) {
      const int64_t r = inputs[t];
      const F* d = ws.dx.data() + t * C;
      for (int64_t g = 0; g < ng; ++g) {
        F acc = 0;
        for (int64_t i = g * E.G; i < (g + 1) * E.G; ++i) acc += d[i] * F(E.grid[E.get(r, i)]);
        ds[r * ng + g] += acc;
      }
    }
  }
  return loss;
}

template <class F>
void forward_last_logits(const TrainModel& m, Workspace<F>& ws, const int32_t* tokens, int64_t T, F* logits) {
  forward_layers(m, ws, tokens, 1, T);
  linear_forward(logits, ws.xnf.data() + (T - 1) * m.hp.n_embd, 1, m.head(), nullptr);
}

template struct Workspace<float>;
template struct Workspace<double>;
template LossSum forward_backward<float>(const TrainModel&, const TrainMask&, Workspace<float>&, const int32_t*,
                                         const int32_t*, int64_t, int64_t, double, Grads<float>*,
                                         LutTileSink<float>*, const Teacher<float>*);
template LossSum forward_backward<double>(const TrainModel&, const TrainMask&, Workspace<double>&, const int32_t*,
                                          const int32_t*, int64_t, int64_t, double, Grads<double>*,
                                          LutTileSink<double>*, const Teacher<double>*);
template void forward_last_logits<float>(const TrainModel&, Workspace<float>&, const int32_t*, int64_t, float*);
template void forward_last_logits<double>(const TrainModel&, Workspace<double>&, const int32_t*, int64_t, double*);

}  // namespace primal::train
