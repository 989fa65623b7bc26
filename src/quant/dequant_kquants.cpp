// Dequantization of the K-quants Q2_K, Q3_K, Q4_K, Q5_K and Q6_K (super-blocks of 256 weights).
// Sub-block scales are formed first (`d * sc`, `dmin * m`, each one fp32 product) and then
// applied as `dl * q - ml`, which is ggml's order of operations: the results equal ggml's
// dequantize_row_* bit for bit.
//
// Element order. Write an element index inside the super-block as i = 128*h + 32*g + r
// (h = 0..1, g = 0..3, r = 0..31) for the 2-bit and 6-bit layouts, or i = 64*c + 32*s + r
// (c = 0..3, s = 0..1) for the 4-bit and 5-bit ones. Then:
//   Q2_K  q = (qs[32h + r] >> 2g) & 3,                      sub-block i / 16
//   Q3_K  q = ((qs[32h + r] >> 2g) & 3) + 4*hbit - 4, hbit = bit (4h + g) of hmask[r]
//   Q4_K  q = nibble s of qs[32c + r],                      sub-block i / 32 = 2c + s
//   Q5_K  q = nibble s of qs[32c + r] + 16 * bit (2c + s) of qh[r]
//   Q6_K  q = (nibble (g / 2) of ql[64h + 32(g % 2) + r]) | ((qh[32h + r] >> 2g) & 3) << 4,
//         minus 32;                                         sub-block i / 16
#include "quant/fp_exact.h"  // first: no fused multiply-adds (bit-exactness)
#include "core/half.h"
#include "quant/blocks.h"
#include "quant/formats.h"

namespace primal::quant {

void dequant_q2_k(const void* src, float* dst, int64_t n) {
  const BlockQ2_K* b = static_cast<const BlockQ2_K*>(src);
  for (int64_t k = 0; k < n / QK_K; ++k, dst += QK_K) {
    const float d = f16_to_f32(b[k].d);
    const float dmin = f16_to_f32(b[k].dmin);
    for (int h = 0; h < 2; ++h) {
      const uint8_t* q = b[k].qs + 32 * h;
      for (int g = 0; g < 4; ++g) {
        for (int s = 0; s < 2; ++s) {  // two sub-blocks of 16 per (h, g)
          const int is = 8 * h + 2 * g + s;
          const uint8_t sc = b[k].scales[is];
          const float dl = d * float(sc & 0xF);
          const float ml = dmin * float(sc >> 4);
          float* y = dst + 16 * is;
          for (int l = 0; l < 16; ++l) y[l] = dl * float((q[16 * s + l] >> (2 * g)) & 3) - ml;
        }
      }
    }
  }
}

// The 16 six-bit Q3_K scales, already minus 32: the low 4 bits of scale j are nibble (j / 8) of
// byte j % 8, the top 2 bits are bits 2*(j/4) of byte 8 + j % 4.
static inline void q3k_scales(const uint8_t* s, int* sc) {
  for (int j = 0; j < 16; ++j) {
    const int lo = j < 8 ? s[j] & 0xF : s[j - 8] >> 4;
    const int hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    sc[j] = (lo | hi << 4) - 32;
  }
}

void dequant_q3_k(const void* src, float* dst, int64_t n) {
  const BlockQ3_K* b = static_cast<const BlockQ3_K*>(src);
  int sc[16];
  for (int64_t k = 0; k < n / QK_K; ++k, dst += QK_K) {
    const float d = f16_to_f32(b[k].d);
    q3k_scales(b[k].scales, sc);
    for (int h = 0; h < 2; ++h) {
      const uint8_t* q = b[k].qs + 32 * h;
      for (int g = 0; g < 4; ++g) {
        const uint8_t mask = uint8_t(1u << (4 * h + g));
        for (int s = 0; s < 2; ++s) {
          const int is = 8 * h + 2 * g + s;
          const float dl = d * float(sc[is]);
          float* y = dst + 16 * is;
          for (int l = 0; l < 16; ++l) {
            const int r = 16 * s + l;
            const int v = ((q[r] >> (2 * g)) & 3) - ((b[k].hmask[r] & mask) ? 0 : 4);
            y[l] = dl * float(v);
          }
        }
      }
    }
  }
}

void dequant_q4_k(const void* src, float* dst, int64_t n) {
  const BlockQ4_K* b = static_cast<const BlockQ4_K*>(src);
  for (int64_t k = 0; k < n / QK_K; ++k, dst += QK_K) {
    const float d = f16_to_f32(b[k].d);
    const float dmin = f16_to_f32(b[k].dmin);
    for (int c = 0; c < 4; ++c) {
      const uint8_t* q = b[k].qs + 32 * c;
      uint8_t sc, m;
      get_scale_min_k4(2 * c, b[k].scales, &sc, &m);
      const float d1 = d * float(sc), m1 = dmin * float(m);
      get_scale_min_k4(2 * c + 1, b[k].scales, &sc, &m);
      const float d2 = d * float(sc), m2 = dmin * float(m);
      float* y = dst + 64 * c;
      for (int r = 0; r < 32; ++r) y[r] = d1 * float(q[r] & 0xF) - m1;
      for (int r = 0; r < 32; ++r) y[32 + r] = d2 * float(q[r] >> 4) - m2;
    }
  }
}

void dequant_q5_k(const void* src, float* dst, int64_t n) {
  const BlockQ5_K* b = static_cast<const BlockQ5_K*>(src);
  for (int64_t k = 0; k < n / QK_K; ++k, dst += QK_K) {
    const float d = f16_to_f32(b[k].d);
    const float dmin = f16_to_f32(b[k].dmin);
    const uint8_t* qh = b[k].qh;
    for (int c = 0; c < 4; ++c) {
      const uint8_t* q = b[k].qs + 32 * c;
      const uint8_t u1 = uint8_t(1u << (2 * c)), u2 = uint8_t(2u << (2 * c));
      uint8_t sc, m;
      get_scale_min_k4(2 * c, b[k].scales, &sc, &m);
      const float d1 = d * float(sc), m1 = dmin * float(m);
      get_scale_min_k4(2 * c + 1, b[k].scales, &sc, &m);
      const float d2 = d * float(sc), m2 = dmin * float(m);
      float* y = dst + 64 * c;
      for (int r = 0; r < 32; ++r) y[r] = d1 * float((q[r] & 0xF) + ((qh[r] & u1) ? 16 : 0)) - m1;
      for (int r = 0; r < 32; ++r) y[32 + r] = d2 * float((q[r] >> 4) + ((qh[r] & u2) ? 16 : 0)) - m2;
    }
  }
}

void dequant_q6_k(const void* src, float* dst, int64_t n) {
  const BlockQ6_K* b = static_cast<const BlockQ6_K*>(src);
  for (int64_t k = 0; k < n / QK_K; ++k, dst += QK_K) {
    const float d = f16_to_f32(b[k].d);
    // ggml evaluates d * sc * q left to right, (d * sc) * q: the sub-block scales come first.
    float ds[QK_K / 16];
    for (int j = 0; j < QK_K / 16; ++j) ds[j] = d * float(b[k].scales[j]);
    for (int h = 0; h < 2; ++h) {
      const uint8_t* ql = b[k].ql + 64 * h;
      const uint8_t* qh = b[k].qh + 32 * h;
      for (int g = 0; g < 4; ++g) {
        const uint8_t* l4 = ql + 32 * (g % 2);
        const int shift = 4 * (g / 2);
        float* y = dst + 128 * h + 32 * g;
        const float* dsg = ds + 8 * h + 2 * g;
        for (int half = 0; half < 2; ++half) {
          const float s = dsg[half];
          for (int r = 16 * half; r < 16 * half + 16; ++r) {
            const int q = (((l4[r] >> shift) & 0xF) | ((qh[r] >> (2 * g)) & 3) << 4) - 32;
            y[r] = s * float(q);
          }
        }
      }
    }
  }
}

}  // namespace primal::quant
