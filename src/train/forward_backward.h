// Forward and backward of the whole model for training, written out per layer (llm.c style):
// B sequences of T tokens, positions 0..T-1 in each. The forward keeps what the backward needs
// (residual stream, normalized inputs and their rstd, q/k/v after RoPE, attention output and
// log-sum-exp, FFN gate/up/product); the head and the cross-entropy run fused in chunks of rows,
// so at most (kHeadChunk, V) logits exist at any time, and the head's backward runs right there.
#pragma once
#include <cstdint>
#include <vector>

#include "train/grads.h"
#include "train/linear.h"
#include "train/model.h"

namespace primal::train {

constexpr int64_t kHeadChunk = 128;  // rows of logits alive at once

template <class F>
struct Workspace {
  struct Layer {
    std::vector<F> xn1, rstd1;   // (N, C), (N): attn_norm output and its 1/rms
    std::vector<F> q, k, v;      // (N, Q), (N, KV), (N, KV) after RoPE
    std::vector<F> att, lse;     // (N, Q), (B, NH, T)
    std::vector<F> mid;          // (N, C) residual after attention
    std::vector<F> xn2, rstd2;   // (N, C), (N): ffn_norm output
    std::vector<F> gate, up, h;  // (N, F) each; h = silu(gate) * up
  };
  int64_t B = 0, T = 0;
  std::vector<std::vector<F>> res;  // (L + 1) x (N, C): residual stream into layer l; res[L] out
  std::vector<Layer> layers;        // (L)
  std::vector<F> xnf, rstdf;        // (N, C), (N): output_norm
  // Backward scratch.
  std::vector<F> dx, dxn, dxnf;     // (N, C)
  std::vector<F> dq, datt;          // (N, Q)
  std::vector<F> dk, dv;            // (N, KV)
  std::vector<F> dgate, dup, dh;    // (N, F)
  std::vector<F> logits;            // (kHeadChunk, V)
  std::vector<F> xchunk, dxchunk;   // (kHeadChunk, C): scored rows gathered when some are not
  std::vector<double> nll;          // (kHeadChunk)

  void resize(const HParams& hp, int64_t B, int64_t T);
  size_t bytes() const;
};

struct LossSum {
  double nll = 0;       // sum of the scored tokens' negative log-likelihoods
  int64_t count = 0;    // scored tokens (targets >= 0)
};

// Distillation (`primal train --teacher`): the loss of a scored position is
// KL(softmax(teacher logits) || softmax(model logits)) instead of the cross-entropy of its target.
// The teacher is any model of the same vocabulary (its own width and depth, e.g. the float model
// a LUT model was quantized from); it runs forward on the same inputs in its own workspace.
template <class F>
struct Teacher {
  const TrainModel* model = nullptr;
  Workspace<F>* ws = nullptr;
};

// The lowest logical layer a backward pass must reach: 0 when the token embeddings take a
// gradient (embd_grad), else the lowest logical layer whose physical layer is trainable (L: none).
int64_t lowest_backward_layer(const TrainModel& m, const TrainMask& mask, bool embd_grad);

// inputs, targets: (B, T); a target < 0 is not scored. With grads == null: the forward and the
// loss only. Otherwise the gradient of loss_scale * (sum of nll) is added into grads (float
// parameters marked in mask) and LUT index tiles go to sink (may be null). With a teacher the
// per-position loss (LossSum::nll) is the KL to the teacher's distribution.
template <class F>
LossSum forward_backward(const TrainModel& m, const TrainMask& mask, Workspace<F>& ws, const int32_t* inputs,
                         const int32_t* targets, int64_t B, int64_t T, double loss_scale, Grads<F>* grads,
                         LutTileSink<F>* sink, const Teacher<F>* teacher = nullptr);

// Logits (V) of the last position of one sequence (T tokens), for sampling.
template <class F>
void forward_last_logits(const TrainModel& m, Workspace<F>& ws, const int32_t* tokens, int64_t T, F* logits);

}  // namespace primal::train
