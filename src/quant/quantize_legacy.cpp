// Reference quantizers of the 32-weight legacy formats, as ggml's quantize_row_q*_ref (used by
// llama-quantize for these types when it has no importance matrix): one pass for the scale (and
// minimum), then round-to-nearest codes. Rounding details are ggml's and matter for bit-exactness:
// Q4_0/Q4_1/Q5_0/Q5_1 truncate `v + 0.5` toward zero (v >= -0.5 here, so this rounds halves up),
// Q8_0 rounds halves away from zero (roundf).
#include "quant/fp_exact.h"  // first: no fused multiply-adds (bit-exactness)
#include <algorithm>
#include <cfloat>
#include <cmath>

#include "core/half.h"
#include "quant/blocks.h"
#include "quant/formats.h"

namespace primal::quant {
namespace {

// The element of largest magnitude, signed (first one on ties).
inline float signed_absmax(const float* x, int n) {
  float amax = 0, max = 0;
  for (int j = 0; j < n; ++j)
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  return max;
}

inline void min_max(const float* x, int n, float* mn, float* mx) {
  *mn = FLT_MAX;
  *mx = -FLT_MAX;
  for (int j = 0; j < n; ++j) {
    if (x[j] < *mn) *mn = x[j];
    if (x[j] > *mx) *mx = x[j];
  }
}

// C's float -> integer conversion (truncation), for the values these quantizers produce (well
// inside int range); non-finite inputs give 0 instead of undefined behaviour.
inline int trunc_int(float v) { return std::isfinite(v) ? int(v) : 0; }

// 5-bit codes q[32] into qs (low nibbles, Q4_0 order) and qh (bit j = bit 4 of element j).
void pack_5bit(const int* q, uint8_t* qs, uint8_t* qh) {
  uint32_t h = 0;
  for (int j = 0; j < 16; ++j) {
    qs[j] = uint8_t((q[j] & 0xF) | (q[j + 16] & 0xF) << 4);
    h |= uint32_t((q[j] >> 4) & 1) << j;
    h |= uint32_t((q[j + 16] >> 4) & 1) << (j + 16);
  }
  for (int b = 0; b < 4; ++b) qh[b] = uint8_t(h >> (8 * b));
}

}  // namespace

// Q4_0: the largest-magnitude element maps to code 0 (level -8): d = max / -8.
void quant_q4_0(const float* src, void* dst, int64_t n) {
  BlockQ4_0* y = static_cast<BlockQ4_0*>(dst);
  for (int64_t i = 0; i < n / QK4_0; ++i, src += QK4_0) {
    const float d = signed_absmax(src, QK4_0) / -8;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    y[i].d = f32_to_f16(d);
    for (int j = 0; j < QK4_0 / 2; ++j) {
      const int q0 = std::min(15, trunc_int(src[j] * id + 8.5f));
      const int q1 = std::min(15, trunc_int(src[j + 16] * id + 8.5f));
      y[i].qs[j] = uint8_t(q0 | q1 << 4);
    }
  }
}

// Q4_1: levels min + d*q spanning [min, max]: d = (max - min) / 15.
void quant_q4_1(const float* src, void* dst, int64_t n) {
  BlockQ4_1* y = static_cast<BlockQ4_1*>(dst);
  for (int64_t i = 0; i < n / QK4_1; ++i, src += QK4_1) {
    float mn, mx;
    min_max(src, QK4_1, &mn, &mx);
    const float d = (mx - mn) / 15;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    y[i].d = f32_to_f16(d);
    y[i].m = f32_to_f16(mn);
    for (int j = 0; j < QK4_1 / 2; ++j) {
      const int q0 = std::min(15, trunc_int((src[j] - mn) * id + 0.5f));
      const int q1 = std::min(15, trunc_int((src[j + 16] - mn) * id + 0.5f));
      y[i].qs[j] = uint8_t(q0 | q1 << 4);
    }
  }
}

// Q5_0: as Q4_0 with 32 levels: d = max / -16.
void quant_q5_0(const float* src, void* dst, int64_t n) {
  BlockQ5_0* y = static_cast<BlockQ5_0*>(dst);
  int q[QK5_0];
  for (int64_t i = 0; i < n / QK5_0; ++i, src += QK5_0) {
    const float d = signed_absmax(src, QK5_0) / -16;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    y[i].d = f32_to_f16(d);
    for (int j = 0; j < QK5_0; ++j) q[j] = std::min(31, trunc_int(src[j] * id + 16.5f));
    pack_5bit(q, y[i].qs, y[i].qh);
  }
}

// Q5_1: as Q4_1 with 32 levels: d = (max - min) / 31 (ggml applies no cap at 31 here; the code
// of the maximum is 31 up to rounding, and the stored value keeps only 5 bits).
void quant_q5_1(const float* src, void* dst, int64_t n) {
  BlockQ5_1* y = static_cast<BlockQ5_1*>(dst);
  int q[QK5_1];
  for (int64_t i = 0; i < n / QK5_1; ++i, src += QK5_1) {
    float mn, mx;
    min_max(src, QK5_1, &mn, &mx);
    const float d = (mx - mn) / 31;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    y[i].d = f32_to_f16(d);
    y[i].m = f32_to_f16(mn);
    for (int j = 0; j < QK5_1; ++j) q[j] = uint8_t(trunc_int((src[j] - mn) * id + 0.5f));
    pack_5bit(q, y[i].qs, y[i].qh);
  }
}

// Q8_0: d = amax / 127, q = round(x / d) (halves away from zero).
void quant_q8_0(const float* src, void* dst, int64_t n) {
  BlockQ8_0* y = static_cast<BlockQ8_0*>(dst);
  for (int64_t i = 0; i < n / QK8_0; ++i, src += QK8_0) {
    float amax = 0;
    for (int j = 0; j < QK8_0; ++j) amax = std::max(amax, std::fabs(src[j]));
    const float d = amax / 127;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    y[i].d = f32_to_f16(d);
    for (int j = 0; j < QK8_0; ++j) {
      const float r = std::round(src[j] * id);
      y[i].qs[j] = int8_t(std::isfinite(r) ? int(r) : 0);
    }
  }
}

}  // namespace primal::quant
