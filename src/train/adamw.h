// AdamW on the float parameters of a TrainModel (norms, biases, LUT scales, dense embeddings and
// head), with global gradient-norm clipping. LUT indices are not here: they move by votes.
//   g <- g * min(1, clip / ||g||)   (||g|| over every parameter trained this step, fp64)
//   m <- b1 m + (1 - b1) g,  v <- b2 v + (1 - b2) g^2,  u = mhat / (sqrt(vhat) + eps)
//   norms, biases:      p <- p - lr u
//   embeddings, head, dense layer matrices:  p <- p - lr (u + weight_decay p)
//   LUT scales:         s <- s - scale_lr |s| u - scale_lr scale_decay s   (relative steps: a
//                       scale's size depends on the grid's normalization, its ratio does not)
// Bias correction counts the steps each parameter actually took (a layer the peel cascade
// unfreezes later starts at 1).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "train/grads.h"
#include "train/model.h"

namespace primal::train {

struct AdamConfig {
  double lr = 1e-4;            // norms, biases, embeddings, head (times the schedule)
  double scale_lr = 1e-3;      // relative step of LUT scales (times the schedule)
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double weight_decay = 0.0;   // embeddings and head
  double scale_decay = 0.0;    // LUT scales
  double clip = 1.0;           // global gradient-norm clip; 0: off
};

enum class ParamKind { Norm, Bias, Scale, Embed, Head, Dense };  // Dense: a float matrix inside a layer

// One float parameter: its values, its gradient, and the AdamW state (saved in checkpoints).
struct FloatParam {
  std::string name;            // e.g. "blk.3.attn_norm.weight", "blk.3.attn_q.weight.scale"
  ParamKind kind = ParamKind::Norm;
  float* p = nullptr;          // (n)
  float* g = nullptr;          // (n) gradient
  size_t n = 0;
  const Matrix* matrix = nullptr;  // owning matrix (scales), for masks
  int64_t layer = -1;          // physical layer, or -1 (embeddings, head, output norm)
  std::vector<float> m, v;     // (n) moments
  int64_t t = 0;               // steps taken
};

class AdamW {
 public:
  // Every float parameter of m whose gradient buffer exists in g (both must outlive this).
  AdamW(const AdamConfig& cfg, TrainModel& m, Grads<float>& g);

  std::vector<FloatParam>& params() { return params_; }
  const std::vector<FloatParam>& params() const { return params_; }
  const AdamConfig& config() const { return cfg_; }

  // Gradient norm (before clipping) of the parameters for which `trainable` is true.
  double grad_norm(const std::function<bool(const FloatParam&)>& trainable) const;
  // One step on those parameters with lr multiplier `sched`; returns the gradient norm.
  double step(double sched, const std::function<bool(const FloatParam&)>& trainable);

 private:
  AdamConfig cfg_;
  std::vector<FloatParam> params_;
};

}  // namespace primal::train
