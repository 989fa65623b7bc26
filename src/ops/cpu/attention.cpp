#include "ops/cpu/attention.h"

#include <cmath>
#include <vector>

#include "core/error.h"

namespace primal::cpu {

void attention_forward(float* out, const float* q, const float* k, const float* v, int64_t T, int64_t pos0,
                       int64_t NH, int64_t KVH, int64_t HS) {
  PRIMAL_CHECK(NH > 0 && KVH > 0 && NH % KVH == 0, "attention: {} query heads not a multiple of {} KV heads",
               NH, KVH);
  const int64_t group = NH / KVH, kv_stride = KVH * HS;
  const float scale = float(1.0 / std::sqrt(double(HS)));
#pragma omp parallel
  {
    std::vector<float> s(size_t(pos0 + T));  // scores of one query over positions 0..p
#pragma omp for collapse(2) schedule(dynamic, 4)
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t h = 0; h < NH; ++h) {
        const int64_t p = pos0 + t, kvh = h / group;
        const float* qv = q + (t * NH + h) * HS;
        float mx = -INFINITY;
        for (int64_t j = 0; j <= p; ++j) {
          const float* kv = k + j * kv_stride + kvh * HS;
          float dot = 0;
#pragma omp simd reduction(+ : dot)
          for (int64_t d = 0; d < HS; ++d) dot += qv[d] * kv[d];
          s[size_t(j)] = dot * scale;
          mx = std::fmax(mx, s[size_t(j)]);
        }
        double sum = 0;  // up to n_ctx terms: fp64 keeps the normalizer exact to fp32 precision
        for (int64_t j = 0; j <= p; ++j) {
          const float e = std::exp(s[size_t(j)] - mx);
          s[size_t(j)] = e;
          sum += e;
        }
        const float inv = float(1.0 / sum);
        float* o = out + (t * NH + h) * HS;
        for (int64_t d = 0; d < HS; ++d) o[d] = 0;
        for (int64_t j = 0; j <= p; ++j) {
          const float w = s[size_t(j)] * inv;
          const float* vv = v + j * kv_stride + kvh * HS;
#pragma omp simd
          for (int64_t d = 0; d < HS; ++d) o[d] += w * vv[d];
        }
      }
    }
  }
}

}  // namespace primal::cpu
