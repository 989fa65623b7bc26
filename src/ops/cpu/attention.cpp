#include "ops/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"

#include "ops/cpu/blas.h"

namespace primal::cpu {
namespace {

// Row loops: one query at a time, straight from the definition (decode, short batches).
void attention_rows(float* out, const float* q, const float* k, const float* v, int64_t T, int64_t pos0,
                    int64_t NH, int64_t KVH, int64_t HS) {
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


#ifdef PRIMAL_HAVE_OPENBLAS
// Prefill: for one query head and a block of Tb query rows, S = Q K^T and O = softmax(S) V as two
// sgemm calls over the cached positions 0 .. P-1 the block can see; the scores past each row's
// own position are masked before the softmax. Same equations as attention_rows, other
// summation order.
void attention_gemm(float* out, const float* q, const float* k, const float* v, int64_t T, int64_t pos0, int64_t NH,
                    int64_t KVH, int64_t HS) {
  single_threaded_blas();
  constexpr int64_t Tb = 64;
  const int64_t group = NH / KVH, n_blocks = (T + Tb - 1) / Tb;
  const float scale = float(1.0 / std::sqrt(double(HS)));
  const int lq = int(NH * HS), lkv = int(KVH * HS);
#pragma omp parallel
  {
    std::vector<float> S(static_cast<size_t>(Tb * (pos0 + T)));  // (Tb, P) scores of a block
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int64_t h = 0; h < NH; ++h) {
      for (int64_t b = 0; b < n_blocks; ++b) {
        const int64_t t0 = b * Tb, rows = std::min(Tb, T - t0), P = pos0 + t0 + rows;
        const float* qb = q + t0 * NH * HS + h * HS;
        const float* kb = k + (h / group) * HS;
        const float* vb = v + (h / group) * HS;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(rows), int(P), int(HS), scale, qb, lq, kb, lkv, 0.0f,
                    S.data(), int(P));
        for (int64_t r = 0; r < rows; ++r) {
          float* s = S.data() + r * P;
          const int64_t p = pos0 + t0 + r;  // this query's position: keys 0..p are visible
          float mx = -INFINITY;
          for (int64_t j = 0; j <= p; ++j) mx = std::fmax(mx, s[j]);
          double sum = 0;
          for (int64_t j = 0; j <= p; ++j) sum += (s[j] = std::exp(s[j] - mx));
          const float inv = float(1.0 / sum);
          for (int64_t j = 0; j <= p; ++j) s[j] *= inv;
          for (int64_t j = p + 1; j < P; ++j) s[j] = 0.0f;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(rows), int(HS), int(P), 1.0f, S.data(), int(P), vb,
                    lkv, 0.0f, out + t0 * NH * HS + h * HS, lq);
      }
    }
  }
}
#endif

}  // namespace

void attention_forward(float* out, const float* q, const float* k, const float* v, int64_t T, int64_t pos0,
                       int64_t NH, int64_t KVH, int64_t HS) {
  PRIMAL_CHECK(NH > 0 && KVH > 0 && NH % KVH == 0, "attention: {} query heads not a multiple of {} KV heads",
               NH, KVH);
#ifdef PRIMAL_HAVE_OPENBLAS
  // From a few dozen queries on, two GEMMs per head beat the row loops several times over.
  if (T >= kAttentionGemmMinT) return attention_gemm(out, q, k, v, T, pos0, NH, KVH, HS);
#endif
  attention_rows(out, q, k, v, T, pos0, NH, KVH, HS);
}

}  // namespace primal::cpu
