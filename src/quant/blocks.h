// ggml block layouts (ggml-common.h), byte for byte: these structs are what GGUF files store.
// Scales `d`, `dmin`, `m` are IEEE fp16 bit patterns (core/half.h converts them). Sizes are
// asserted here and against core/dtype's table in the tests.
//
// Legacy formats (32 weights per block):
//   Q4_0  x = d * (q - 8),        q in [0, 16)
//   Q4_1  x = d * q + m,          q in [0, 16)
//   Q5_0  x = d * (q - 16),       q in [0, 32), bit 4 of q in qh
//   Q5_1  x = d * q + m,          q in [0, 32), bit 4 of q in qh
//   Q8_0  x = d * q,              q in [-128, 128)
//   IQ4_NL x = d * kvalues_iq4nl[q], q in [0, 16)
// Nibble order of the 4-bit legacy formats: byte j holds element j (low nibble) and element
// j + 16 (high nibble).
//
// K-quants (256 weights per super-block, QK_K):
//   Q2_K  16 sub-blocks of 16:  x = d * sc * q - dmin * m,   q in [0, 4),  sc, m 4-bit
//   Q3_K  16 sub-blocks of 16:  x = d * (sc - 32) * (q - 4), q in [0, 8),  sc 6-bit
//   Q4_K   8 sub-blocks of 32:  x = d * sc * q - dmin * m,   q in [0, 16), sc, m 6-bit
//   Q5_K   8 sub-blocks of 32:  x = d * sc * q - dmin * m,   q in [0, 32), sc, m 6-bit
//   Q6_K  16 sub-blocks of 16:  x = d * sc * (q - 32),       q in [0, 64), sc int8
// The element order inside the packed arrays is spelled out in dequant_kquants.cpp.
#pragma once
#include <cstdint>

namespace primal {

constexpr int QK4_0 = 32;
constexpr int QK4_1 = 32;
constexpr int QK5_0 = 32;
constexpr int QK5_1 = 32;
constexpr int QK8_0 = 32;
constexpr int QK4_NL = 32;
constexpr int QK_K = 256;
constexpr int K_SCALE_SIZE = 12;

struct BlockQ4_0 {
  uint16_t d;              // fp16 scale
  uint8_t qs[QK4_0 / 2];   // nibbles: element j low, j + 16 high
};
struct BlockQ4_1 {
  uint16_t d;              // fp16 scale
  uint16_t m;              // fp16 offset (the block minimum)
  uint8_t qs[QK4_1 / 2];
};
struct BlockQ5_0 {
  uint16_t d;
  uint8_t qh[4];           // bit j (little-endian u32) = bit 4 of element j
  uint8_t qs[QK5_0 / 2];   // low 4 bits, nibble order as Q4_0
};
struct BlockQ5_1 {
  uint16_t d;
  uint16_t m;
  uint8_t qh[4];
  uint8_t qs[QK5_1 / 2];
};
struct BlockQ8_0 {
  uint16_t d;              // fp16 scale
  int8_t qs[QK8_0];        // x = d * q
};
struct BlockIQ4_NL {
  uint16_t d;
  uint8_t qs[QK4_NL / 2];  // indices into kvalues_iq4nl, nibble order as Q4_0
};

struct BlockQ2_K {
  uint8_t scales[QK_K / 16];  // low nibble: scale, high nibble: min, per sub-block of 16
  uint8_t qs[QK_K / 4];       // 2-bit quants
  uint16_t d;                 // fp16 super-block scale of the scales
  uint16_t dmin;              // fp16 super-block scale of the mins
};
struct BlockQ3_K {
  uint8_t hmask[QK_K / 8];    // high bit of each quant (set means q >= 4)
  uint8_t qs[QK_K / 4];       // low 2 bits
  uint8_t scales[12];         // 16 scales of 6 bits, stored +32
  uint16_t d;                 // fp16 super-block scale
};
struct BlockQ4_K {
  uint16_t d;                      // fp16 super-block scale of the scales
  uint16_t dmin;                   // fp16 super-block scale of the mins
  uint8_t scales[K_SCALE_SIZE];    // 8 scales + 8 mins of 6 bits (get_scale_min_k4 layout)
  uint8_t qs[QK_K / 2];            // 4-bit quants
};
struct BlockQ5_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[K_SCALE_SIZE];
  uint8_t qh[QK_K / 8];            // bit 4 of each quant
  uint8_t qs[QK_K / 2];            // low 4 bits
};
struct BlockQ6_K {
  uint8_t ql[QK_K / 2];            // low 4 bits
  uint8_t qh[QK_K / 4];            // high 2 bits
  int8_t scales[QK_K / 16];        // signed 8-bit sub-block scales
  uint16_t d;                      // fp16 super-block scale
};

static_assert(sizeof(BlockQ4_0) == 18);
static_assert(sizeof(BlockQ4_1) == 20);
static_assert(sizeof(BlockQ5_0) == 22);
static_assert(sizeof(BlockQ5_1) == 24);
static_assert(sizeof(BlockQ8_0) == 34);
static_assert(sizeof(BlockIQ4_NL) == 18);
static_assert(sizeof(BlockQ2_K) == 84);
static_assert(sizeof(BlockQ3_K) == 110);
static_assert(sizeof(BlockQ4_K) == 144);
static_assert(sizeof(BlockQ5_K) == 176);
static_assert(sizeof(BlockQ6_K) == 210);

// The 16 levels of IQ4_NL (and IQ4_XS), sorted ascending.
inline constexpr int8_t kvalues_iq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                             1,    13,   25,  38,  53,  69,  89,  113};

// Scale j (0..7) and min j of the 12-byte Q4_K/Q5_K scale array: entries 0..3 are the low 6 bits
// of bytes j and j+4; entries 4..7 keep their low 4 bits in byte j+4 (scale low nibble, min high
// nibble) and their top 2 bits in the spare top bits of bytes j-4 (scale) and j (min).
inline void get_scale_min_k4(int j, const uint8_t* q, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = uint8_t((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = uint8_t((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

}  // namespace primal
