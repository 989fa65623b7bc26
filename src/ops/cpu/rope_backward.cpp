#include "ops/cpu/rope_backward.h"

#include <cmath>

#include "core/error.h"

namespace primal::cpu {

template <class F>
void rope_rotate(F* x, int64_t T, int64_t n_heads, int64_t pos0, const RopeParams& p, bool inverse) {
  const int64_t HS = p.head_dim, half = p.n_rot / 2;
  PRIMAL_CHECK(int64_t(p.inv_freq.size()) == half && p.n_rot <= HS, "rope: inconsistent parameters");
  const int64_t step = p.neox ? 1 : 2, other = p.neox ? half : 1;
#pragma omp parallel for schedule(static) if (T * n_heads * half >= (1 << 15))
  for (int64_t t = 0; t < T; ++t) {
    const double pos = double(pos0 + t);
    for (int64_t i = 0; i < half; ++i) {
      const double ang = pos * p.inv_freq[size_t(i)];
      // fp32 callers get the same fp32 cos/sin as the inference rope; fp64 callers full precision.
      const F c = F(std::cos(ang)), s = inverse ? F(-std::sin(ang)) : F(std::sin(ang));
      for (int64_t h = 0; h < n_heads; ++h) {
        F* v = x + (t * n_heads + h) * HS + i * step;
        const F a = v[0], b = v[other];
        v[0] = a * c - b * s;
        v[other] = a * s + b * c;
      }
    }
  }
}

template void rope_rotate<float>(float*, int64_t, int64_t, int64_t, const RopeParams&, bool);
template void rope_rotate<double>(double*, int64_t, int64_t, int64_t, const RopeParams&, bool);

}  // namespace primal::cpu
