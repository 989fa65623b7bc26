#include "ops/cpu/cross_entropy_backward.h"

#include <cmath>

#include "core/error.h"

namespace primal::cpu {

template <class F>
double cross_entropy_row(const F* logits, int64_t V, int32_t target) {
  PRIMAL_CHECK(target < V, "cross-entropy: target {} outside the vocabulary (0..{})", target, V - 1);
  if (target < 0) return 0.0;
  F mx = -INFINITY;
  for (int64_t i = 0; i < V; ++i) mx = std::fmax(mx, logits[i]);
  double sum = 0;
  for (int64_t i = 0; i < V; ++i) sum += double(std::exp(logits[i] - mx));
  return std::log(sum) + double(mx) - double(logits[target]);
}

template <class F>
double cross_entropy_backward_row(F* logits, int64_t V, int32_t target, double scale) {
  PRIMAL_CHECK(target < V, "cross-entropy: target {} outside the vocabulary (0..{})", target, V - 1);
  if (target < 0) {
    for (int64_t i = 0; i < V; ++i) logits[i] = 0;
    return 0.0;
  }
  F mx = -INFINITY;
  for (int64_t i = 0; i < V; ++i) mx = std::fmax(mx, logits[i]);
  double sum = 0;
  const double xt = double(logits[target]);
  for (int64_t i = 0; i < V; ++i) {
    logits[i] = std::exp(logits[i] - mx);
    sum += double(logits[i]);
  }
  const F k = F(scale / sum);
  for (int64_t i = 0; i < V; ++i) logits[i] *= k;
  logits[target] -= F(scale);
  return std::log(sum) + double(mx) - xt;
}

namespace {

// max and log-sum-exp of a row, in fp64.
template <class F>
void log_normalizer(const F* x, int64_t V, double& mx, double& lse) {
  mx = -INFINITY;
  for (int64_t i = 0; i < V; ++i) mx = std::fmax(mx, double(x[i]));
  double sum = 0;
  for (int64_t i = 0; i < V; ++i) sum += std::exp(double(x[i]) - mx);
  lse = mx + std::log(sum);
}

}  // namespace

template <class F>
double kl_row(const F* logits, const F* teacher, int64_t V) {
  double ms, ls, mt, lt;
  log_normalizer(logits, V, ms, ls);
  log_normalizer(teacher, V, mt, lt);
  double kl = 0;
  for (int64_t i = 0; i < V; ++i) {
    const double lp = double(teacher[i]) - lt, lq = double(logits[i]) - ls;
    kl += std::exp(lp) * (lp - lq);
  }
  return std::fmax(kl, 0.0);  // >= 0 mathematically; rounding may leave -1e-17
}

template <class F>
double kl_backward_row(F* logits, const F* teacher, int64_t V, double scale) {
  double ms, ls, mt, lt;
  log_normalizer(logits, V, ms, ls);
  log_normalizer(teacher, V, mt, lt);
  double kl = 0;
  for (int64_t i = 0; i < V; ++i) {
    const double lp = double(teacher[i]) - lt, lq = double(logits[i]) - ls;
    const double p = std::exp(lp);
    kl += p * (lp - lq);
    logits[i] = F(scale * (std::exp(lq) - p));
  }
  return std::fmax(kl, 0.0);
}

template double kl_row<float>(const float*, const float*, int64_t);
template double kl_row<double>(const double*, const double*, int64_t);
template double kl_backward_row<float>(float*, const float*, int64_t, double);
template double kl_backward_row<double>(double*, const double*, int64_t, double);
template double cross_entropy_row<float>(const float*, int64_t, int32_t);
template double cross_entropy_row<double>(const double*, int64_t, int32_t);
template double cross_entropy_backward_row<float>(float*, int64_t, int32_t, double);
template double cross_entropy_backward_row<double>(double*, int64_t, int32_t, double);

}  // namespace primal::cpu
