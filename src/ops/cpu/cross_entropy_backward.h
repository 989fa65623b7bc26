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

}  // namespace primal::cpu
