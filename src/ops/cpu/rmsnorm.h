// RMSNorm (Llama): out[t, c] = inp[t, c] / sqrt(mean_c(inp[t, :]^2) + eps) * weight[c].
#pragma once
#include <cstdint>

namespace primal::cpu {

// out: (T, C), inp: (T, C), weight: (C). out may alias inp. The mean of squares is accumulated in
// fp64 so that the result does not depend on C or on summation order at fp32 precision.
void rmsnorm_forward(float* out, const float* inp, const float* weight, int64_t T, int64_t C, float eps);

}  // namespace primal::cpu
