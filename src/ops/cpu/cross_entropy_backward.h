// Cross-entropy of one row of logits and its gradient, in place:
//   nll = log sum_j exp(x_j) - x_y,   dnll/dx_j = softmax(x)_j - [j == y]
// The training loss is the mean over all scored tokens of a step, so the gradient is scaled by
// `scale` = 1 / (number of scored tokens) by the caller.
#pragma once
#include <cstdint>

namespace primal::cpu {

// logits: (V), replaced by scale * (softmax - onehot(target)). Returns the nll (fp64).
// target < 0: the row is not scored (padding): gradient 0, returns 0.
template <class F>
double cross_entropy_backward_row(F* logits, int64_t V, int32_t target, double scale);

// The nll alone, logits untouched (evaluation).
template <class F>
double cross_entropy_row(const F* logits, int64_t V, int32_t target);

// Distillation: the soft-target loss of one row against a teacher's logits (same vocabulary),
//   kl = sum_j p_j (log p_j - log q_j),   p = softmax(teacher), q = softmax(logits),
//   dkl/dx_j = q_j - p_j
// (the cross-entropy above is the case of a one-hot p). logits: (V), replaced by
// scale * (q - p); teacher: (V), untouched. Returns the KL (fp64, >= 0).
template <class F>
double kl_backward_row(F* logits, const F* teacher, int64_t V, double scale);

// The KL alone, both rows untouched.
template <class F>
double kl_row(const F* logits, const F* teacher, int64_t V);

}  // namespace primal::cpu
