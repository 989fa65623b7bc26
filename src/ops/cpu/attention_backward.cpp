#include "ops/cpu/attention_backward.h"

#include <cmath>
#include <vector>

#include "core/error.h"
#include "ops/cpu/gemm.h"

namespace primal::cpu {

// Each (sequence, head) is a few GEMMs over its (T, T) score matrix: Q K^T, the causal softmax
// row by row, then P V; the backward recomputes P from the saved log-sum-exp and runs
// dP = dO V^T, dS = P (dP - D), dQ = dS K, dK = dS^T Q, dV = P^T dO. Entries above the diagonal
// are computed by the GEMMs and then zeroed (half the work is wasted, and still far faster than
// loops). Heads strided in (B, T, H, HS) rows are addressed with leading dimensions.

template <class F>
void attention_forward_train(F* out, F* lse, const F* q, const F* k, const F* v, int64_t B, int64_t T, int64_t NH,
                             int64_t KVH, int64_t HS) {
  PRIMAL_CHECK(NH > 0 && KVH > 0 && NH % KVH == 0, "attention: {} query heads not a multiple of {} KV heads", NH,
               KVH);
  const int64_t group = NH / KVH, qs = NH * HS, ks = KVH * HS;
  const F scale = F(1.0 / std::sqrt(double(HS)));
#pragma omp parallel if (B * NH * T * T * HS >= (1 << 20))
  {
    std::vector<F> S(static_cast<size_t>(T * T));
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t h = 0; h < NH; ++h) {
        const F* qb = q + b * T * qs + h * HS;
        const F* kb = k + b * T * ks + (h / group) * HS;
        const F* vb = v + b * T * ks + (h / group) * HS;
        gemm<F>(false, true, T, T, HS, scale, qb, qs, kb, ks, F(0), S.data(), T);
        for (int64_t t = 0; t < T; ++t) {
          F* s = S.data() + t * T;
          F mx = -INFINITY;
          for (int64_t j = 0; j <= t; ++j) mx = s[j] > mx ? s[j] : mx;
          double sum = 0;
          for (int64_t j = 0; j <= t; ++j) {
            s[j] = std::exp(s[j] - mx);
            sum += double(s[j]);
          }
          lse[(b * NH + h) * T + t] = F(double(mx) + std::log(sum));
          const F inv = F(1.0 / sum);
          for (int64_t j = 0; j <= t; ++j) s[j] *= inv;
          for (int64_t j = t + 1; j < T; ++j) s[j] = 0;
        }
        gemm<F>(false, false, T, HS, T, F(1), S.data(), T, vb, ks, F(0), out + b * T * qs + h * HS, qs);
      }
    }
  }
}

template <class F>
void attention_backward(F* dq, F* dk, F* dv, const F* dout, const F* out, const F* q, const F* k, const F* v,
                        const F* lse, int64_t B, int64_t T, int64_t NH, int64_t KVH, int64_t HS) {
  PRIMAL_CHECK(NH > 0 && KVH > 0 && NH % KVH == 0, "attention: {} query heads not a multiple of {} KV heads", NH,
               KVH);
  const int64_t group = NH / KVH, qs = NH * HS, ks = KVH * HS;
  const F scale = F(1.0 / std::sqrt(double(HS)));
#pragma omp parallel if (B * NH * T * T * HS >= (1 << 19))
  {
    std::vector<F> P(static_cast<size_t>(T * T)), dP(static_cast<size_t>(T * T)), D(static_cast<size_t>(T));
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t kh = 0; kh < KVH; ++kh) {
        const F* kb = k + b * T * ks + kh * HS;
        const F* vb = v + b * T * ks + kh * HS;
        F* dkb = dk + b * T * ks + kh * HS;
        F* dvb = dv + b * T * ks + kh * HS;
        // The group's query heads add into dK, dV in head order.
        for (int64_t h = kh * group; h < (kh + 1) * group; ++h) {
          const int64_t off = b * T * qs + h * HS;
          const F beta = h == kh * group ? F(0) : F(1);
          gemm<F>(false, true, T, T, HS, scale, q + off, qs, kb, ks, F(0), P.data(), T);
          gemm<F>(false, true, T, T, HS, F(1), dout + off, qs, vb, ks, F(0), dP.data(), T);
          for (int64_t t = 0; t < T; ++t) {
            F d = 0;
            for (int64_t e = 0; e < HS; ++e) d += dout[off + t * qs + e] * out[off + t * qs + e];
            D[size_t(t)] = d;
          }
          for (int64_t t = 0; t < T; ++t) {
            F* p = P.data() + t * T;
            F* ds = dP.data() + t * T;
            const F l = lse[(b * NH + h) * T + t];
            for (int64_t j = 0; j <= t; ++j) {
              p[j] = std::exp(p[j] - l);
              ds[j] = p[j] * (ds[j] - D[size_t(t)]);
            }
            for (int64_t j = t + 1; j < T; ++j) p[j] = ds[j] = 0;
          }
          gemm<F>(true, false, T, HS, T, F(1), P.data(), T, dout + off, qs, beta, dvb, ks);       // P^T dO
          gemm<F>(false, false, T, HS, T, scale, dP.data(), T, kb, ks, F(0), dq + off, qs);       // dS K
          gemm<F>(true, false, T, HS, T, scale, dP.data(), T, q + off, qs, beta, dkb, ks);        // dS^T Q
        }
      }
    }
  }
}

template void attention_forward_train<float>(float*, float*, const float*, const float*, const float*, int64_t,
                                             int64_t, int64_t, int64_t, int64_t);
template void attention_forward_train<double>(double*, double*, const double*, const double*, const double*, int64_t,
                                              int64_t, int64_t, int64_t, int64_t);
template void attention_backward<float>(float*, float*, float*, const float*, const float*, const float*,
                                        const float*, const float*, const float*, int64_t, int64_t, int64_t, int64_t,
                                        int64_t);
template void attention_backward<double>(double*, double*, double*, const double*, const double*, const double*,
                                         const double*, const double*, const double*, int64_t, int64_t, int64_t,
                                         int64_t, int64_t);

}  // namespace primal::cpu
