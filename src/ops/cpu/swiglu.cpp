#include "ops/cpu/swiglu.h"

#include <cmath>

namespace primal::cpu {

void swiglu_forward(float* out, const float* gate, const float* up, int64_t N) {
#pragma omp parallel for schedule(static) if (N > 65536)
  for (int64_t i = 0; i < N; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void residual_forward(float* out, const float* a, const float* b, int64_t N) {
  for (int64_t i = 0; i < N; ++i) out[i] = a[i] + b[i];
}

}  // namespace primal::cpu
