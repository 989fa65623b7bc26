#include "ops/cpu/swiglu_backward.h"

#include <cmath>

namespace primal::cpu {

template <class F>
void swiglu_forward_train(F* out, const F* gate, const F* up, int64_t N) {
#pragma omp parallel for schedule(static) if (N > 65536)
  for (int64_t i = 0; i < N; ++i) {
    const F g = gate[i];
    out[i] = g / (F(1) + std::exp(-g)) * up[i];
  }
}

template <class F>
void swiglu_backward(F* dgate, F* dup, const F* dout, const F* gate, const F* up, int64_t N) {
#pragma omp parallel for schedule(static) if (N > 65536)
  for (int64_t i = 0; i < N; ++i) {
    const F g = gate[i], u = up[i], d = dout[i];
    const F sg = F(1) / (F(1) + std::exp(-g));
    dgate[i] = d * u * sg * (F(1) + g * (F(1) - sg));
    dup[i] = d * g * sg;
  }
}

template void swiglu_forward_train<float>(float*, const float*, const float*, int64_t);
template void swiglu_forward_train<double>(double*, const double*, const double*, int64_t);
template void swiglu_backward<float>(float*, float*, const float*, const float*, const float*, int64_t);
template void swiglu_backward<double>(double*, double*, const double*, const double*, const double*, int64_t);

}  // namespace primal::cpu
