// RMSNorm for training: a forward that keeps the per-row reciprocal rms for the backward, and the
// backward. With r = 1 / sqrt(mean_c(x^2) + eps) and y = x r w:
//   dx[c] = r (dy[c] w[c]) - r^3 / C * x[c] * sum_j dy[j] w[j] x[j]
//   dw[c] = sum_t dy[t, c] x[t, c] r[t]
// F is float (training) or double (finite-difference tests); parameters are always stored fp32.
#pragma once
#include <cstdint>

namespace primal::cpu {

// out, inp: (T, C); weight: (C); rstd: (T) written. out may alias inp.
template <class F>
void rmsnorm_forward_train(F* out, F* rstd, const F* inp, const float* weight, int64_t T, int64_t C, float eps);

// dinp (T, C) += the input gradient; dweight (C) += the weight gradient unless null.
// dout, inp: (T, C); rstd: (T) from the forward. Rows in parallel for dinp; dweight is summed
// over rows in order (fp64), columns in parallel, so the result does not depend on threads.
template <class F>
void rmsnorm_backward(F* dinp, F* dweight, const F* dout, const F* inp, const float* weight, const F* rstd, int64_t T,
                      int64_t C);

}  // namespace primal::cpu
