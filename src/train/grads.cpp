#include "train/grads.h"

#include <algorithm>

namespace primal::train {

bool TrainMask::any_layer() const { return std::find(layer.begin(), layer.end(), true) != layer.end(); }

namespace {

template <class F>
void alloc(MatGrad<F>& g, const Matrix& m, bool dense) {
  if (m.is_lut()) g.dscale.assign(m.lut->scale.size(), F(0));
  else if (dense) g.dW.assign(size_t(m.O * m.I), F(0));
}

template <class F>
void zero(MatGrad<F>& g) {
  std::fill(g.dW.begin(), g.dW.end(), F(0));
  std::fill(g.dscale.begin(), g.dscale.end(), F(0));
}

}  // namespace

template <class F>
void Grads<F>::allocate(const TrainModel& m, bool train_embd, bool train_head) {
  // Tied: the head's gradient lands in tok_embd's buffer, which exists when either trains.
  const bool tied = m.hp.tied_embeddings;
  alloc(tok_embd, m.tok_embd, train_embd || (tied && train_head));
  if (!tied) alloc(output, m.output, train_head);
  output_norm.assign(m.output_norm.size(), F(0));
  layers.resize(m.layers.size());
  for (size_t p = 0; p < m.layers.size(); ++p) {
    const TrainLayer& l = m.layers[p];
    LayerGrad<F>& g = layers[p];
    g.attn_norm.assign(l.attn_norm.size(), F(0));
    g.ffn_norm.assign(l.ffn_norm.size(), F(0));
    g.bq.assign(l.bq.size(), F(0));
    g.bk.assign(l.bk.size(), F(0));
    g.bv.assign(l.bv.size(), F(0));
    const auto mats = l.matrices();
    const auto gm = g.matrices();
    for (size_t k = 0; k < mats.size(); ++k) alloc(*gm[k], *mats[k], true);
  }
}

template <class F>
void Grads<F>::zero() {
  train::zero(tok_embd);
  train::zero(output);
  std::fill(output_norm.begin(), output_norm.end(), F(0));
  for (auto& g : layers) {
    for (auto* v : {&g.attn_norm, &g.ffn_norm, &g.bq, &g.bk, &g.bv}) std::fill(v->begin(), v->end(), F(0));
    for (auto* m : g.matrices()) train::zero(*m);
  }
}

template struct Grads<float>;
template struct Grads<double>;

}  // namespace primal::train
