#include "ops/cpu/rmsnorm.h"

#include <cmath>

namespace primal::cpu {

void rmsnorm_forward(float* out, const float* inp, const float* weight, int64_t T, int64_t C, float eps) {
#pragma omp parallel for schedule(static) if (T > 1)
  for (int64_t t = 0; t < T; ++t) {
    const float* x = inp + t * C;
    float* y = out + t * C;
    double ss = 0;
    for (int64_t c = 0; c < C; ++c) ss += double(x[c]) * double(x[c]);
    // HF and ggml both form 1/sqrt(mean + eps) in fp32 and scale x by it before the weight.
    const float scale = float(1.0 / std::sqrt(ss / double(C) + double(eps)));
    for (int64_t c = 0; c < C; ++c) y[c] = (x[c] * scale) * weight[c];
  }
}

}  // namespace primal::cpu
