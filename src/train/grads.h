// Gradients of the float parameters of a TrainModel, and which parts are trainable.
// LUT indices have no gradient here: their tiles go straight to the votes (votes.h).
#pragma once
#include <cstdint>
#include <vector>

#include "train/model.h"

namespace primal::train {

// Which parameters a step trains. Within a trainable layer: norms, biases, LUT scales and
// indices (and dense matrices, if any).
struct TrainMask {
  bool embd = true;                // token_embd (dense: AdamW; LUT embeddings are never trained)
  bool head = true;                // output (dense: AdamW; LUT: scales + votes)
  bool out_norm = true;            // output_norm
  std::vector<bool> layer;         // (P) physical layers
  bool scales = true;              // LUT scales (off: indices only)

  bool any_layer() const;
};

template <class F>
struct MatGrad {
  std::vector<F> dW;      // dense (O, I), else empty
  std::vector<F> dscale;  // LUT (O, I / G), else empty
};

template <class F>
struct LayerGrad {
  std::vector<F> attn_norm, ffn_norm;  // (C)
  std::vector<F> bq, bk, bv;           // (Q), (KV), (KV) when the model has biases
  MatGrad<F> wq, wk, wv, wo, w_gate, w_up, w_down;
  std::vector<MatGrad<F>*> matrices() { return {&wq, &wk, &wv, &wo, &w_gate, &w_up, &w_down}; }
};

template <class F>
struct Grads {
  MatGrad<F> tok_embd;             // dense embeddings: dW (V, C)
  std::vector<LayerGrad<F>> layers;  // (P)
  std::vector<F> output_norm;      // (C)
  MatGrad<F> output;               // head (untied)

  // Buffers for every float parameter of m (dense embeddings/head only when train_embd/head).
  void allocate(const TrainModel& m, bool train_embd, bool train_head);
  void zero();
};

}  // namespace primal::train
