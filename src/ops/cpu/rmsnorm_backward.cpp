#include "ops/cpu/rmsnorm_backward.h"

#include <cmath>

namespace primal::cpu {

template <class F>
void rmsnorm_forward_train(F* out, F* rstd, const F* inp, const float* weight, int64_t T, int64_t C, float eps) {
#pragma omp parallel for schedule(static) if (T * C >= (1 << 16))
  for (int64_t t = 0; t < T; ++t) {
    const F* x = inp + t * C;
    F* y = out + t * C;
    double ss = 0;
    for (int64_t c = 0; c < C; ++c) ss += double(x[c]) * double(x[c]);
    const F r = F(1.0 / std::sqrt(ss / double(C) + double(eps)));
    rstd[t] = r;
    for (int64_t c = 0; c < C; ++c) y[c] = (x[c] * r) * F(weight[c]);
  }
}

template <class F>
void rmsnorm_backward(F* dinp, F* dweight, const F* dout, const F* inp, const float* weight, const F* rstd, int64_t T,
                      int64_t C) {
#pragma omp parallel for schedule(static) if (T * C >= (1 << 16))
  for (int64_t t = 0; t < T; ++t) {
    const F* x = inp + t * C;
    const F* dy = dout + t * C;
    F* dx = dinp + t * C;
    const double r = double(rstd[t]);
    double dot = 0;  // sum_j dy_j w_j x_j
    for (int64_t c = 0; c < C; ++c) dot += double(dy[c]) * double(weight[c]) * double(x[c]);
    const F a = F(r), b = F(r * r * r * dot / double(C));
    for (int64_t c = 0; c < C; ++c) dx[c] += a * (dy[c] * F(weight[c])) - b * x[c];
  }
  if (!dweight) return;
#pragma omp parallel for schedule(static) if (T * C > 65536)
  for (int64_t c = 0; c < C; ++c) {
    double s = 0;
    for (int64_t t = 0; t < T; ++t) s += double(dout[t * C + c]) * double(inp[t * C + c]) * double(rstd[t]);
    dweight[c] += F(s);
  }
}

template void rmsnorm_forward_train<float>(float*, float*, const float*, const float*, int64_t, int64_t, float);
template void rmsnorm_forward_train<double>(double*, double*, const double*, const float*, int64_t, int64_t, float);
template void rmsnorm_backward<float>(float*, float*, const float*, const float*, const float*, const float*, int64_t,
                                      int64_t);
template void rmsnorm_backward<double>(double*, double*, const double*, const double*, const float*, const double*,
                                       int64_t, int64_t);

}  // namespace primal::cpu
