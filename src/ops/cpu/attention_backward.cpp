#include "ops/cpu/attention_backward.h"

#include <cmath>
#include <vector>

#include "core/error.h"

namespace primal::cpu {

template <class F>
void attention_forward_train(F* out, F* lse, const F* q, const F* k, const F* v, int64_t B, int64_t T, int64_t NH,
                             int64_t KVH, int64_t HS) {
  PRIMAL_CHECK(NH > 0 && KVH > 0 && NH % KVH == 0, "attention: {} query heads not a multiple of {} KV heads", NH,
               KVH);
  const int64_t group = NH / KVH, qs = NH * HS, ks = KVH * HS;
  const F scale = F(1.0 / std::sqrt(double(HS)));
#pragma omp parallel if (B * NH * T * T * HS >= (1 << 20))
  {
    std::vector<F> s(static_cast<size_t>(T));
#pragma omp for collapse(3) schedule(dynamic, 8)
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t h = 0; h < NH; ++h) {
        for (int64_t t = 0; t < T; ++t) {
          const F* qv = q + (b * T + t) * qs + h * HS;
          const F* kb = k + b * T * ks + (h / group) * HS;
          const F* vb = v + b * T * ks + (h / group) * HS;
          F mx = -INFINITY;
          for (int64_t j = 0; j <= t; ++j) {
            const F* kv = kb + j * ks;
            F dot = 0;
            for (int64_t d = 0; d < HS; ++d) dot += qv[d] * kv[d];
            s[size_t(j)] = dot * scale;
            mx = std::fmax(mx, s[size_t(j)]);
          }
          double sum = 0;
          for (int64_t j = 0; j <= t; ++j) {
            s[size_t(j)] = std::exp(s[size_t(j)] - mx);
            sum += double(s[size_t(j)]);
          }
          lse[(b * NH + h) * T + t] = F(double(mx) + std::log(sum));
          const F inv = F(1.0 / sum);
          F* o = out + (b * T + t) * qs + h * HS;
          for (int64_t d = 0; d < HS; ++d) o[d] = 0;
          for (int64_t j = 0; j <= t; ++j) {
            const F w = s[size_t(j)] * inv;
            const F* vv = vb + j * ks;
            for (int64_t d = 0; d < HS; ++d) o[d] += w * vv[d];
          }
        }
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
    std::vector<F> p(static_cast<size_t>(T)), ds(static_cast<size_t>(T));
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t kh = 0; kh < KVH; ++kh) {
        const F* kb = k + b * T * ks + kh * HS;
        const F* vb = v + b * T * ks + kh * HS;
        F* dkb = dk + b * T * ks + kh * HS;
        F* dvb = dv + b * T * ks + kh * HS;
        for (int64_t j = 0; j < T; ++j)
          for (int64_t d = 0; d < HS; ++d) dkb[j * ks + d] = dvb[j * ks + d] = 0;
        for (int64_t h = kh * group; h < (kh + 1) * group; ++h) {
          for (int64_t t = 0; t < T; ++t) {
            const int64_t row = (b * T + t) * qs + h * HS;
            const F* qv = q + row;
            const F* dov = dout + row;
            const F* ov = out + row;
            const F l = lse[(b * NH + h) * T + t];
            F D = 0;
            for (int64_t d = 0; d < HS; ++d) D += dov[d] * ov[d];
            for (int64_t j = 0; j <= t; ++j) {
              const F* kv = kb + j * ks;
              const F* vv = vb + j * ks;
              F dot = 0, dp = 0;
              for (int64_t d = 0; d < HS; ++d) {
                dot += qv[d] * kv[d];
                dp += dov[d] * vv[d];
              }
              p[size_t(j)] = std::exp(dot * scale - l);
              ds[size_t(j)] = p[size_t(j)] * (dp - D);
            }
            F* dqv = dq + row;
            for (int64_t d = 0; d < HS; ++d) dqv[d] = 0;
            for (int64_t j = 0; j <= t; ++j) {
              const F* kv = kb + j * ks;
              F* dkv = dkb + j * ks;
              F* dvv = dvb + j * ks;
              const F a = ds[size_t(j)] * scale, pj = p[size_t(j)];
              for (int64_t d = 0; d < HS; ++d) {
                dqv[d] += a * kv[d];
                dkv[d] += a * qv[d];
                dvv[d] += pj * dov[d];
              }
            }
          }
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
