// Reference quantizers of the K-quants, as ggml's quantize_row_{q2,q3,q4,q5,q6}_K_ref (what
// llama-quantize runs when it has no importance matrix). Per super-block of 256:
//   1. a scale (and for Q2/Q4/Q5_K an offset) per sub-block, from the searches of scale_search.h;
//   2. those scales quantized against one fp16 super-scale (6 bits, 4 bits for Q2_K, 8 for Q6_K);
//   3. every weight re-coded to the nearest level of the *stored* sub-block scale, so that the
//      codes fit the scales the decoder will see;
//   4. packing in the layouts that dequant_kquants.cpp reads.
#include "quant/fp_exact.h"  // first: no fused multiply-adds (bit-exactness)
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/half.h"
#include "quant/blocks.h"
#include "quant/formats.h"
#include "quant/scale_search.h"

namespace primal::quant {
namespace {

inline int clampi(int v, int lo, int hi) { return std::max(lo, std::min(hi, v)); }

// 2-bit codes L[0..256) into qs[64]: byte 32h + r holds elements 128h + 32g + r at bits 2g.
void pack_2bit(const uint8_t* L, uint8_t* qs) {
  for (int h = 0; h < 2; ++h)
    for (int r = 0; r < 32; ++r) {
      const uint8_t* l = L + 128 * h + r;
      qs[32 * h + r] = uint8_t(l[0] | l[32] << 2 | l[64] << 4 | l[96] << 6);
    }
}

// Q4_K/Q5_K: sub-block scale ls and min lm (6 bits each) of sub-block j into the 12-byte array.
// Must be called for j = 0..3 before j = 4..7 (the latter OR their top bits into earlier bytes).
void pack_scale_min_k4(int j, uint8_t ls, uint8_t lm, uint8_t* s) {
  if (j < 4) {
    s[j] = ls;
    s[j + 4] = lm;
  } else {
    s[j + 4] = uint8_t((ls & 0xF) | (lm & 0xF) << 4);
    s[j - 4] |= uint8_t((ls >> 4) << 6);
    s[j] |= uint8_t((lm >> 4) << 6);
  }
}

// Shared by Q4_K (nmax 15) and Q5_K (nmax 31): 8 sub-blocks of 32 with scale and min, both
// quantized to 6 bits against fp16 super-scales d = max_scale / 63 and dmin = max_min / 63.
// Writes d, dmin, scales[12] and the final codes L[256].
void quantize_scale_min_k4(const float* x, int nmax, float rmin, float rdelta, int nstep, uint16_t* d_out,
                           uint16_t* dmin_out, uint8_t* scales_out, uint8_t* L) {
  uint8_t Laux[32];
  float weights[32];
  float mins[QK_K / 32];
  float scales[QK_K / 32];
  float max_scale = 0, max_min = 0;  // scales and mins are >= 0: the offset is subtracted
  for (int j = 0; j < QK_K / 32; ++j) {
    const float* xs = x + 32 * j;
    float sum_x2 = 0;
    for (int l = 0; l < 32; ++l) sum_x2 += xs[l] * xs[l];
    const float av_x = std::sqrt(sum_x2 / 32);
    for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(xs[l]);
    scales[j] = make_qkx2_quants(32, nmax, xs, weights, L + 32 * j, &mins[j], Laux, rmin, rdelta, nstep, false);
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
  const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
  for (int j = 0; j < QK_K / 32; ++j) {
    // Through uint8_t first, then the cap at 63, as ggml does.
    const uint8_t ls = std::min<uint8_t>(63, uint8_t(nearest_int(inv_scale * scales[j])));
    const uint8_t lm = std::min<uint8_t>(63, uint8_t(nearest_int(inv_min * mins[j])));
    pack_scale_min_k4(j, ls, lm, scales_out);
  }
  *d_out = f32_to_f16(max_scale / 63.f);
  *dmin_out = f32_to_f16(max_min / 63.f);

  for (int j = 0; j < QK_K / 32; ++j) {
    uint8_t sc, m;
    get_scale_min_k4(j, scales_out, &sc, &m);
    const float d = f16_to_f32(*d_out) * float(sc);
    if (d == 0) continue;  // keep the search's codes
    const float dm = f16_to_f32(*dmin_out) * float(m);
    for (int ii = 0; ii < 32; ++ii) L[32 * j + ii] = uint8_t(clampi(nearest_int((x[32 * j + ii] + dm) / d), 0, nmax));
  }
}

}  // namespace

void quant_q2_k(const float* src, void* dst, int64_t n) {
  BlockQ2_K* y = static_cast<BlockQ2_K*>(dst);
  uint8_t L[QK_K];
  uint8_t Laux[16];
  float weights[16];
  float mins[QK_K / 16];
  float scales[QK_K / 16];
  const float q4scale = 15.f;
  for (int64_t i = 0; i < n / QK_K; ++i, src += QK_K) {
    const float* x = src;
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < QK_K / 16; ++j) {
      for (int l = 0; l < 16; ++l) weights[l] = std::fabs(x[16 * j + l]);
      scales[j] = make_qkx2_quants(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux, -0.5f, 0.1f, 15, true);
      if (scales[j] > max_scale) max_scale = scales[j];
      if (mins[j] > max_min) max_min = mins[j];
    }
    if (max_scale > 0) {
      const float iscale = q4scale / max_scale;
      for (int j = 0; j < QK_K / 16; ++j) y[i].scales[j] = uint8_t(nearest_int(iscale * scales[j]));
      y[i].d = f32_to_f16(max_scale / q4scale);
    } else {
      for (int j = 0; j < QK_K / 16; ++j) y[i].scales[j] = 0;
      y[i].d = f32_to_f16(0.f);
    }
    if (max_min > 0) {
      const float iscale = q4scale / max_min;
      for (int j = 0; j < QK_K / 16; ++j) y[i].scales[j] |= uint8_t(nearest_int(iscale * mins[j]) << 4);
      y[i].dmin = f32_to_f16(max_min / q4scale);
    } else {
      y[i].dmin = f32_to_f16(0.f);
    }
    for (int j = 0; j < QK_K / 16; ++j) {
      const float d = f16_to_f32(y[i].d) * float(y[i].scales[j] & 0xF);
      if (d == 0) continue;
      const float dm = f16_to_f32(y[i].dmin) * float(y[i].scales[j] >> 4);
      for (int ii = 0; ii < 16; ++ii) L[16 * j + ii] = uint8_t(clampi(nearest_int((x[16 * j + ii] + dm) / d), 0, 3));
    }
    pack_2bit(L, y[i].qs);
  }
}

void quant_q3_k(const float* src, void* dst, int64_t n) {
  BlockQ3_K* y = static_cast<BlockQ3_K*>(dst);
  int8_t L[QK_K];
  float scales[QK_K / 16];
  for (int64_t i = 0; i < n / QK_K; ++i, src += QK_K) {
    const float* x = src;
    float max_scale = 0, amax = 0;  // the sub-block scale of largest magnitude, signed
    for (int j = 0; j < QK_K / 16; ++j) {
      scales[j] = make_q3_quants(16, 4, x + 16 * j, L + 16 * j);
      const float scale = std::fabs(scales[j]);
      if (scale > amax) {
        amax = scale;
        max_scale = scales[j];
      }
    }
    // Scales as 6-bit values l + 32, l in [-32, 32): low nibbles in bytes 0..7, top 2 bits in
    // bytes 8..11 (see dequant_kquants.cpp).
    std::memset(y[i].scales, 0, 12);
    if (max_scale != 0) {
      const float iscale = -32.f / max_scale;
      for (int j = 0; j < QK_K / 16; ++j) {
        int8_t l = int8_t(nearest_int(iscale * scales[j]));
        l = int8_t(std::max<int8_t>(-32, std::min<int8_t>(31, l)) + 32);
        if (j < 8)
          y[i].scales[j] = uint8_t(l & 0xF);
        else
          y[i].scales[j - 8] |= uint8_t((l & 0xF) << 4);
        l = int8_t(l >> 4);
        y[i].scales[j % 4 + 8] |= uint8_t(l << (2 * (j / 4)));
      }
      y[i].d = f32_to_f16(1 / iscale);
    } else {
      y[i].d = f32_to_f16(0.f);
    }
    for (int j = 0; j < QK_K / 16; ++j) {
      const int lo = j < 8 ? y[i].scales[j] & 0xF : y[i].scales[j - 8] >> 4;
      const int sc = (lo | ((y[i].scales[8 + j % 4] >> (2 * (j / 4))) & 3) << 4) - 32;
      const float d = f16_to_f32(y[i].d) * float(sc);
      if (d == 0) continue;
      for (int ii = 0; ii < 16; ++ii) L[16 * j + ii] = int8_t(clampi(nearest_int(x[16 * j + ii] / d), -4, 3) + 4);
    }
    // High bit of element j goes to bit j / 32 of hmask[j % 32]; the low 2 bits are packed as Q2_K.
    std::memset(y[i].hmask, 0, QK_K / 8);
    uint8_t low[QK_K];
    for (int j = 0; j < QK_K; ++j) {
      int l = L[j];
      if (l > 3) {
        y[i].hmask[j % 32] |= uint8_t(1u << (j / 32));
        l -= 4;
      }
      low[j] = uint8_t(l);
    }
    pack_2bit(low, y[i].qs);
  }
}

void quant_q4_k(const float* src, void* dst, int64_t n) {
  BlockQ4_K* y = static_cast<BlockQ4_K*>(dst);
  uint8_t L[QK_K];
  for (int64_t i = 0; i < n / QK_K; ++i, src += QK_K) {
    quantize_scale_min_k4(src, 15, -1.f, 0.1f, 20, &y[i].d, &y[i].dmin, y[i].scales, L);
    // Byte 32c + r: element 64c + r in the low nibble, 64c + 32 + r in the high one.
    for (int c = 0; c < 4; ++c)
      for (int r = 0; r < 32; ++r) y[i].qs[32 * c + r] = uint8_t(L[64 * c + r] | L[64 * c + 32 + r] << 4);
  }
}

void quant_q5_k(const float* src, void* dst, int64_t n) {
  BlockQ5_K* y = static_cast<BlockQ5_K*>(dst);
  uint8_t L[QK_K];
  for (int64_t i = 0; i < n / QK_K; ++i, src += QK_K) {
    quantize_scale_min_k4(src, 31, -0.5f, 0.1f, 15, &y[i].d, &y[i].dmin, y[i].scales, L);
    // As Q4_K for the low 4 bits; bit 4 of element 64c + 32s + r is bit 2c + s of qh[r].
    std::memset(y[i].qh, 0, QK_K / 8);
    for (int c = 0; c < 4; ++c)
      for (int r = 0; r < 32; ++r) {
        int l1 = L[64 * c + r], l2 = L[64 * c + 32 + r];
        if (l1 > 15) {
          l1 -= 16;
          y[i].qh[r] |= uint8_t(1u << (2 * c));
        }
        if (l2 > 15) {
          l2 -= 16;
          y[i].qh[r] |= uint8_t(2u << (2 * c));
        }
        y[i].qs[32 * c + r] = uint8_t(l1 | l2 << 4);
      }
  }
}

void quant_q6_k(const float* src, void* dst, int64_t n) {
  BlockQ6_K* y = static_cast<BlockQ6_K*>(dst);
  int8_t L[QK_K];
  float scales[QK_K / 16];
  for (int64_t i = 0; i < n / QK_K; ++i, src += QK_K) {
    const float* x = src;
    float max_scale = 0, max_abs_scale = 0;
    for (int ib = 0; ib < QK_K / 16; ++ib) {
      scales[ib] = make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib);
      const float abs_scale = std::fabs(scales[ib]);
      if (abs_scale > max_abs_scale) {
        max_abs_scale = abs_scale;
        max_scale = scales[ib];
      }
    }
    if (max_abs_scale < kGroupMaxEps) {
      std::memset(&y[i], 0, sizeof(BlockQ6_K));
      continue;
    }
    // The largest-magnitude scale maps to -128; the others are capped at 127.
    const float iscale = -128.f / max_scale;
    y[i].d = f32_to_f16(1 / iscale);
    for (int ib = 0; ib < QK_K / 16; ++ib) y[i].scales[ib] = int8_t(std::min(127, nearest_int(iscale * scales[ib])));
    for (int j = 0; j < QK_K / 16; ++j) {
      const float d = f16_to_f32(y[i].d) * float(y[i].scales[j]);
      if (d == 0) continue;
      for (int ii = 0; ii < 16; ++ii) L[16 * j + ii] = int8_t(clampi(nearest_int(x[16 * j + ii] / d), -32, 31) + 32);
    }
    // Element 128h + 32g + r: low nibble in nibble g/2 of ql[64h + 32(g%2) + r], high 2 bits at
    // bits 2g of qh[32h + r].
    for (int h = 0; h < 2; ++h)
      for (int r = 0; r < 32; ++r) {
        const int8_t* l = L + 128 * h + r;
        y[i].ql[64 * h + r] = uint8_t((l[0] & 0xF) | (l[64] & 0xF) << 4);
        y[i].ql[64 * h + r + 32] = uint8_t((l[32] & 0xF) | (l[96] & 0xF) << 4);
        y[i].qh[32 * h + r] = uint8_t((l[0] >> 4) | (l[32] >> 4) << 2 | (l[64] >> 4) << 4 | (l[96] >> 4) << 6);
      }
  }
}

}  // namespace primal::quant
