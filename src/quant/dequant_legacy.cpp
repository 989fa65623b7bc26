// Dequantization of the 32-weight legacy formats Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and IQ4_NL.
// Each value is one fp32 product (plus one add for the _1 formats), evaluated as ggml writes it
// (`q*d + m`, never fused), so the results equal ggml's dequantize_row_* bit for bit.

#include "quant/fp_exact.h"  // first: no fused multiply-adds (bit-exactness)
#include "core/half.h"
#include "quant/blocks.h"
#include "quant/formats.h"

namespace primal::quant {

void dequant_q4_0(const void* src, float* dst, int64_t n) {
  const BlockQ4_0* b = static_cast<const BlockQ4_0*>(src);
  for (int64_t k = 0; k < n / QK4_0; ++k, dst += QK4_0) {
    const float d = f16_to_f32(b[k].d);
    // Low nibbles are elements 0..15, high nibbles 16..31 (two passes vectorize better).
    for (int j = 0; j < QK4_0 / 2; ++j) dst[j] = float((b[k].qs[j] & 0xF) - 8) * d;
    for (int j = 0; j < QK4_0 / 2; ++j) dst[j + QK4_0 / 2] = float((b[k].qs[j] >> 4) - 8) * d;
  }
}

void dequant_q4_1(const void* src, float* dst, int64_t n) {
  const BlockQ4_1* b = static_cast<const BlockQ4_1*>(src);
  for (int64_t k = 0; k < n / QK4_1; ++k, dst += QK4_1) {
    const float d = f16_to_f32(b[k].d);
    const float m = f16_to_f32(b[k].m);
    for (int j = 0; j < QK4_1 / 2; ++j) dst[j] = float(b[k].qs[j] & 0xF) * d + m;
    for (int j = 0; j < QK4_1 / 2; ++j) dst[j + QK4_1 / 2] = float(b[k].qs[j] >> 4) * d + m;
  }
}

// Bit 4 of element j (0..31) is bit j of the little-endian u32 qh.
static inline uint32_t load_qh(const uint8_t* qh) {
  return uint32_t(qh[0]) | uint32_t(qh[1]) << 8 | uint32_t(qh[2]) << 16 | uint32_t(qh[3]) << 24;
}

void dequant_q5_0(const void* src, float* dst, int64_t n) {
  const BlockQ5_0* b = static_cast<const BlockQ5_0*>(src);
  for (int64_t k = 0; k < n / QK5_0; ++k, dst += QK5_0) {
    const float d = f16_to_f32(b[k].d);
    const uint32_t qh = load_qh(b[k].qh);
    for (int j = 0; j < QK5_0 / 2; ++j) {
      const int lo = (b[k].qs[j] & 0xF) | int((qh >> j) & 1) << 4;
      const int hi = (b[k].qs[j] >> 4) | int((qh >> (j + 16)) & 1) << 4;
      dst[j] = float(lo - 16) * d;
      dst[j + QK5_0 / 2] = float(hi - 16) * d;
    }
  }
}

void dequant_q5_1(const void* src, float* dst, int64_t n) {
  const BlockQ5_1* b = static_cast<const BlockQ5_1*>(src);
  for (int64_t k = 0; k < n / QK5_1; ++k, dst += QK5_1) {
    const float d = f16_to_f32(b[k].d);
    const float m = f16_to_f32(b[k].m);
    const uint32_t qh = load_qh(b[k].qh);
    for (int j = 0; j < QK5_1 / 2; ++j) {
      const int lo = (b[k].qs[j] & 0xF) | int((qh >> j) & 1) << 4;
      const int hi = (b[k].qs[j] >> 4) | int((qh >> (j + 16)) & 1) << 4;
      dst[j] = float(lo) * d + m;
      dst[j + QK5_1 / 2] = float(hi) * d + m;
    }
  }
}

void dequant_q8_0(const void* src, float* dst, int64_t n) {
  const BlockQ8_0* b = static_cast<const BlockQ8_0*>(src);
  for (int64_t k = 0; k < n / QK8_0; ++k, dst += QK8_0) {
    const float d = f16_to_f32(b[k].d);
    for (int j = 0; j < QK8_0; ++j) dst[j] = float(b[k].qs[j]) * d;
  }
}

void dequant_iq4_nl(const void* src, float* dst, int64_t n) {
  const BlockIQ4_NL* b = static_cast<const BlockIQ4_NL*>(src);
  for (int64_t k = 0; k < n / QK4_NL; ++k, dst += QK4_NL) {
    const float d = f16_to_f32(b[k].d);
    for (int j = 0; j < QK4_NL / 2; ++j) dst[j] = d * float(kvalues_iq4nl[b[k].qs[j] & 0xF]);
    for (int j = 0; j < QK4_NL / 2; ++j) dst[j + QK4_NL / 2] = d * float(kvalues_iq4nl[b[k].qs[j] >> 4]);
  }
}

}  // namespace primal::quant
