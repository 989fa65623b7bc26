#include "ops/cpu/softmax.h"

#include <cmath>

#include "core/error.h"

namespace primal::cpu {

void softmax_forward(float* probs, const float* logits, int64_t V) {
  float mx = -INFINITY;
  for (int64_t i = 0; i < V; ++i) mx = std::fmax(mx, logits[i]);
  double sum = 0;
  for (int64_t i = 0; i < V; ++i) {
    const float e = std::exp(logits[i] - mx);
    probs[i] = e;
    sum += e;
  }
  const float inv = float(1.0 / sum);
  for (int64_t i = 0; i < V; ++i) probs[i] *= inv;
}

double cross_entropy_forward(const float* logits, int64_t V, int32_t target) {
  PRIMAL_CHECK(target >= 0 && target < V, "cross-entropy: target {} outside the vocabulary (0..{})", target, V - 1);
  float mx = -INFINITY;
  for (int64_t i = 0; i < V; ++i) mx = std::fmax(mx, logits[i]);
  // Each term in fp32 (x - max <= 0, so exp is in (0, 1] and exact to an ulp), the sum in fp64.
  double sum = 0;
  for (int64_t i = 0; i < V; ++i) sum += std::exp(logits[i] - mx);
  return std::log(sum) + double(mx) - double(logits[target]);
}

}  // namespace primal::cpu
