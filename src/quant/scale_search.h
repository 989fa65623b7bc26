// Scale searches of ggml's reference K-quant quantizers (ggml-quants.c: make_qx_quants,
// make_q3_quants, make_qkx2_quants), restated with ggml's exact order of fp32 operations so that
// the chosen scales and codes, and therefore the bytes written, are those llama-quantize writes.
// Internal to src/quant.
#pragma once
#include <cstdint>
#include <cstring>

namespace primal::quant {

// Values below this are treated as an all-zero group (ggml's GROUP_MAX_EPS).
constexpr float kGroupMaxEps = 1e-15f;

// Round to nearest, ties to even, for |f| < 2^22 (ggml's nearest_int): adding 1.5 * 2^23 puts
// the rounded integer in the low mantissa bits. Defined for every input (no UB on NaN/inf).
inline int nearest_int(float f) {
  const float v = f + 12582912.0f;
  int32_t i;
  std::memcpy(&i, &v, sizeof i);
  return (i & 0x007fffff) - 0x00400000;
}

// Symmetric codes L[i] = l + nmax, l in [-nmax, nmax), x ~ scale * l, with weights w = x^2
// (ggml's make_qx_quants with rmse_type 1 and no importance weights): start from the scale that
// maps the largest |x| to -nmax, then try 18 nearby scales and keep the one with the best
// weighted least-squares fit. Returns the fitted scale (0 for an all-zero group).
float make_qx_quants(int n, int nmax, const float* x, int8_t* L);

// As make_qx_quants with one initial scale and then up to 5 rounds of coordinate descent on the
// codes (ggml's make_q3_quants with do_rmse). L[i] = l + nmax.
float make_q3_quants(int n, int nmax, const float* x, int8_t* L);

// Asymmetric codes L[i] in [0, nmax], x ~ scale * L[i] - the_min (the_min >= 0), weighted by
// `weights`: a grid of nstep+1 trial scales (nmax + rmin + rdelta*is) / (max - min), each refit
// by weighted least squares for scale and min; keeps the lowest weighted error (absolute error
// when use_mad, else squared). Laux is scratch of n bytes. ggml's make_qkx2_quants.
float make_qkx2_quants(int n, int nmax, const float* x, const float* weights, uint8_t* L, float* the_min,
                       uint8_t* Laux, float rmin, float rdelta, int nstep, bool use_mad);

}  // namespace primal::quant
