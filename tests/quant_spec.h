// Test-side restatement of ggml's block formats, written from the format description element by
// element (where each bit of element i lives), independently of src/quant: a block is described
// by its logical content (scales and integer codes), `encode` lays out the bytes, `value` is the
// format's formula, `decode` reads a block back into logical content.
//
// Codes are the signed levels of the formula:
//   Q4_0 x = d*q, q in [-8, 8)        Q4_1 x = d*q + m, q in [0, 16)     Q8_0 x = d*q, q int8
//   Q5_0 x = d*q, q in [-16, 16)      Q5_1 x = d*q + m, q in [0, 32)     IQ4_NL x = d*kvalues[q]
//   Q2_K x = d*sc*q - dmin*mn, q in [0, 4),  sc, mn in [0, 16)   (sub-blocks of 16)
//   Q3_K x = d*sc*q, q in [-4, 4),           sc in [-32, 32)     (sub-blocks of 16)
//   Q4_K x = d*sc*q - dmin*mn, q in [0, 16), sc, mn in [0, 64)   (sub-blocks of 32)
//   Q5_K x = d*sc*q - dmin*mn, q in [0, 32), sc, mn in [0, 64)   (sub-blocks of 32)
//   Q6_K x = d*sc*q, q in [-32, 32),         sc int8             (sub-blocks of 16)
// (For Q4_1/Q5_1 the offset m is stored in the `dmin` field below.)
//
// Every product here is exact in fp32 (an fp16 scale has 11 significant bits, codes at most 8),
// so ggml's fp32 evaluation is the formula rounded once: `value` computes it in double and
// rounds to float, which equals ggml's result bit for bit as long as d and dmin are within a
// factor 2^20 of each other (then the double subtraction is exact too).
#pragma once
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/dtype.h"
#include "core/half.h"

namespace qspec {

using primal::DType;

inline constexpr int kIQ4NL[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

struct Block {
  DType type = DType::Q8_0;
  uint16_t d = 0;             // fp16 bits
  uint16_t dmin = 0;          // fp16 bits: dmin (K-quants with mins) or m (Q4_1, Q5_1)
  std::vector<int> sc, mn;    // per sub-block (K-quants)
  std::vector<int> q;         // per element

  bool operator==(const Block&) const = default;
};

inline int block_size(DType t) { return int(primal::traits(t).block); }
inline int sub_size(DType t) {
  return t == DType::Q4_K || t == DType::Q5_K ? 32 : (t == DType::Q2_K || t == DType::Q3_K || t == DType::Q6_K) ? 16 : 0;
}
inline bool has_mins(DType t) { return t == DType::Q2_K || t == DType::Q4_K || t == DType::Q5_K; }
// Code range [lo, hi] of the elements.
inline void code_range(DType t, int* lo, int* hi) {
  switch (t) {
    case DType::Q4_0: *lo = -8, *hi = 7; break;
    case DType::Q4_1: case DType::IQ4_NL: case DType::Q4_K: *lo = 0, *hi = 15; break;
    case DType::Q5_0: *lo = -16, *hi = 15; break;
    case DType::Q5_1: case DType::Q5_K: *lo = 0, *hi = 31; break;
    case DType::Q8_0: *lo = -128, *hi = 127; break;
    case DType::Q2_K: *lo = 0, *hi = 3; break;
    case DType::Q3_K: *lo = -4, *hi = 3; break;
    case DType::Q6_K: *lo = -32, *hi = 31; break;
    default: *lo = *hi = 0;
  }
}
inline void scale_range(DType t, int* lo, int* hi) {
  switch (t) {
    case DType::Q2_K: *lo = 0, *hi = 15; break;
    case DType::Q3_K: *lo = -32, *hi = 31; break;
    case DType::Q4_K: case DType::Q5_K: *lo = 0, *hi = 63; break;
    case DType::Q6_K: *lo = -128, *hi = 127; break;
    default: *lo = *hi = 0;
  }
}

// Bit access on a byte array.
inline void put_bits(std::vector<uint8_t>& b, size_t byte, int shift, int nbits, int v) {
  const int mask = (1 << nbits) - 1;
  b[byte] = uint8_t((b[byte] & ~(mask << shift)) | ((v & mask) << shift));
}
inline int get_bits(const uint8_t* b, size_t byte, int shift, int nbits) { return (b[byte] >> shift) & ((1 << nbits) - 1); }
inline void put_u16(std::vector<uint8_t>& b, size_t at, uint16_t v) { b[at] = uint8_t(v), b[at + 1] = uint8_t(v >> 8); }
inline uint16_t get_u16(const uint8_t* b, size_t at) { return uint16_t(b[at] | b[at + 1] << 8); }

// Where the bits of element i live, per format (byte offsets within the block):
//  - 4-bit legacy (Q4_0, Q4_1, Q5_*, IQ4_NL): nibble i / 16 of qs[i % 16];
//    Q5_*: bit 4 in bit i % 8 of qh[i / 8];
//  - Q2_K / Q3_K low 2 bits and Q6_K high 2 bits: i = 128h + 32g + r -> bits 2g of byte 32h + r;
//  - Q3_K high bit: bit i / 32 of hmask[i % 32] (set when q >= 0, i.e. stored q + 4 >= 4);
//  - Q4_K / Q5_K: i = 64c + 32s + r -> nibble s of qs[32c + r]; Q5_K bit 4: bit 2c + s of qh[r];
//  - Q6_K low 4 bits: nibble g / 2 of ql[64h + 32(g % 2) + r].
// K-quant 6-bit scale/min j of Q4_K/Q5_K: j < 4: low 6 bits of bytes j (scale) and j + 4 (min);
// j >= 4: low 4 bits in byte j + 4 (scale low nibble, min high nibble), top 2 bits in bits 6-7
// of byte j - 4 (scale) and byte j (min). Q3_K scale j stored as sc + 32: low 4 bits in nibble
// j / 8 of byte j % 8, top 2 bits in bits 2(j / 4) of byte 8 + j % 4.
struct Layout {
  size_t d, dmin, qs, qh, scales, hmask, ql;  // byte offsets of the fields in the block
};
inline Layout layout(DType t) {
  switch (t) {
    case DType::Q4_0: case DType::IQ4_NL: return {0, 0, 2, 0, 0, 0, 0};
    case DType::Q4_1: return {0, 2, 4, 0, 0, 0, 0};
    case DType::Q5_0: return {0, 0, 6, 2, 0, 0, 0};
    case DType::Q5_1: return {0, 2, 8, 4, 0, 0, 0};
    case DType::Q8_0: return {0, 0, 2, 0, 0, 0, 0};
    case DType::Q2_K: return {80, 82, 16, 0, 0, 0, 0};
    case DType::Q3_K: return {108, 0, 32, 0, 96, 0, 0};
    case DType::Q4_K: return {0, 2, 16, 0, 4, 0, 0};
    case DType::Q5_K: return {0, 2, 48, 16, 4, 0, 0};
    case DType::Q6_K: return {208, 0, 0, 128, 192, 0, 0};
    default: return {};
  }
}

inline std::vector<uint8_t> encode(const Block& k) {
  const DType t = k.type;
  const Layout L = layout(t);
  std::vector<uint8_t> b(primal::traits(t).block_bytes, 0);
  put_u16(b, L.d, k.d);
  if (t == DType::Q4_1 || t == DType::Q5_1 || has_mins(t)) put_u16(b, L.dmin, k.dmin);
  for (int i = 0; i < block_size(t); ++i) {
    const int q = k.q[size_t(i)];
    switch (t) {
      case DType::Q4_0: put_bits(b, L.qs + size_t(i % 16), 4 * (i / 16), 4, q + 8); break;
      case DType::Q4_1: case DType::IQ4_NL: put_bits(b, L.qs + size_t(i % 16), 4 * (i / 16), 4, q); break;
      case DType::Q5_0: case DType::Q5_1: {
        const int u = t == DType::Q5_0 ? q + 16 : q;
        put_bits(b, L.qs + size_t(i % 16), 4 * (i / 16), 4, u);
        put_bits(b, L.qh + size_t(i / 8), i % 8, 1, u >> 4);
        break;
      }
      case DType::Q8_0: b[L.qs + size_t(i)] = uint8_t(int8_t(q)); break;
      case DType::Q2_K: case DType::Q3_K: {
        const int u = t == DType::Q3_K ? q + 4 : q;
        const int h = i / 128, g = (i / 32) % 4, r = i % 32;
        put_bits(b, L.qs + size_t(32 * h + r), 2 * g, 2, u & 3);
        if (t == DType::Q3_K) put_bits(b, L.hmask + size_t(i % 32), i / 32, 1, u >> 2);
        break;
      }
      case DType::Q4_K: case DType::Q5_K: {
        const int c = i / 64, s = (i / 32) % 2, r = i % 32;
        put_bits(b, L.qs + size_t(32 * c + r), 4 * s, 4, q);
        if (t == DType::Q5_K) put_bits(b, L.qh + size_t(r), 2 * c + s, 1, q >> 4);
        break;
      }
      case DType::Q6_K: {
        const int u = q + 32, h = i / 128, g = (i / 32) % 4, r = i % 32;
        put_bits(b, L.ql + size_t(64 * h + 32 * (g % 2) + r), 4 * (g / 2), 4, u & 0xF);
        put_bits(b, L.qh + size_t(32 * h + r), 2 * g, 2, u >> 4);
        break;
      }
      default: break;
    }
  }
  const int nsub = sub_size(t) ? block_size(t) / sub_size(t) : 0;
  for (int j = 0; j < nsub; ++j) {
    const int sc = k.sc[size_t(j)];
    switch (t) {
      case DType::Q2_K: b[L.scales + size_t(j)] = uint8_t(sc | k.mn[size_t(j)] << 4); break;
      case DType::Q3_K: {
        const int u = sc + 32;
        put_bits(b, L.scales + size_t(j % 8), 4 * (j / 8), 4, u & 0xF);
        put_bits(b, L.scales + 8 + size_t(j % 4), 2 * (j / 4), 2, u >> 4);
        break;
      }
      case DType::Q4_K: case DType::Q5_K: {
        const int m = k.mn[size_t(j)];
        if (j < 4) {
          put_bits(b, L.scales + size_t(j), 0, 6, sc);
          put_bits(b, L.scales + size_t(j) + 4, 0, 6, m);
        } else {
          put_bits(b, L.scales + size_t(j) + 4, 0, 4, sc & 0xF);
          put_bits(b, L.scales + size_t(j) + 4, 4, 4, m & 0xF);
          put_bits(b, L.scales + size_t(j) - 4, 6, 2, sc >> 4);
          put_bits(b, L.scales + size_t(j), 6, 2, m >> 4);
        }
        break;
      }
      case DType::Q6_K: b[L.scales + size_t(j)] = uint8_t(int8_t(sc)); break;
      default: break;
    }
  }
  return b;
}

inline Block decode(DType t, const uint8_t* b) {
  const Layout L = layout(t);
  Block k;
  k.type = t;
  k.d = get_u16(b, L.d);
  if (t == DType::Q4_1 || t == DType::Q5_1 || has_mins(t)) k.dmin = get_u16(b, L.dmin);
  k.q.resize(size_t(block_size(t)));
  for (int i = 0; i < block_size(t); ++i) {
    int& q = k.q[size_t(i)];
    switch (t) {
      case DType::Q4_0: q = get_bits(b, L.qs + size_t(i % 16), 4 * (i / 16), 4) - 8; break;
      case DType::Q4_1: case DType::IQ4_NL: q = get_bits(b, L.qs + size_t(i % 16), 4 * (i / 16), 4); break;
      case DType::Q5_0: case DType::Q5_1:
        q = get_bits(b, L.qs + size_t(i % 16), 4 * (i / 16), 4) | get_bits(b, L.qh + size_t(i / 8), i % 8, 1) << 4;
        if (t == DType::Q5_0) q -= 16;
        break;
      case DType::Q8_0: q = int8_t(b[L.qs + size_t(i)]); break;
      case DType::Q2_K: case DType::Q3_K: {
        const int h = i / 128, g = (i / 32) % 4, r = i % 32;
        q = get_bits(b, L.qs + size_t(32 * h + r), 2 * g, 2);
        if (t == DType::Q3_K) q = (q | get_bits(b, L.hmask + size_t(i % 32), i / 32, 1) << 2) - 4;
        break;
      }
      case DType::Q4_K: case DType::Q5_K: {
        const int c = i / 64, s = (i / 32) % 2, r = i % 32;
        q = get_bits(b, L.qs + size_t(32 * c + r), 4 * s, 4);
        if (t == DType::Q5_K) q |= get_bits(b, L.qh + size_t(r), 2 * c + s, 1) << 4;
        break;
      }
      case DType::Q6_K: {
        const int h = i / 128, g = (i / 32) % 4, r = i % 32;
        q = (get_bits(b, L.ql + size_t(64 * h + 32 * (g % 2) + r), 4 * (g / 2), 4) |
             get_bits(b, L.qh + size_t(32 * h + r), 2 * g, 2) << 4) - 32;
        break;
      }
      default: break;
    }
  }
  const int nsub = sub_size(t) ? block_size(t) / sub_size(t) : 0;
  k.sc.resize(size_t(nsub));
  if (has_mins(t)) k.mn.resize(size_t(nsub));
  for (int j = 0; j < nsub; ++j) {
    switch (t) {
      case DType::Q2_K:
        k.sc[size_t(j)] = b[L.scales + size_t(j)] & 0xF;
        k.mn[size_t(j)] = b[L.scales + size_t(j)] >> 4;
        break;
      case DType::Q3_K:
        k.sc[size_t(j)] = (get_bits(b, L.scales + size_t(j % 8), 4 * (j / 8), 4) |
                           get_bits(b, L.scales + 8 + size_t(j % 4), 2 * (j / 4), 2) << 4) - 32;
        break;
      case DType::Q4_K: case DType::Q5_K:
        if (j < 4) {
          k.sc[size_t(j)] = get_bits(b, L.scales + size_t(j), 0, 6);
          k.mn[size_t(j)] = get_bits(b, L.scales + size_t(j) + 4, 0, 6);
        } else {
          k.sc[size_t(j)] = get_bits(b, L.scales + size_t(j) + 4, 0, 4) | get_bits(b, L.scales + size_t(j) - 4, 6, 2) << 4;
          k.mn[size_t(j)] = get_bits(b, L.scales + size_t(j) + 4, 4, 4) | get_bits(b, L.scales + size_t(j), 6, 2) << 4;
        }
        break;
      case DType::Q6_K: k.sc[size_t(j)] = int8_t(b[L.scales + size_t(j)]); break;
      default: break;
    }
  }
  return k;
}

// The format's formula for element i, in double (see the header comment for why this is exact).
inline double level(const Block& k, int i, int q) {
  const double d = primal::f16_to_f32(k.d), dmin = primal::f16_to_f32(k.dmin);
  const int ss = sub_size(k.type);
  switch (k.type) {
    case DType::Q4_1: case DType::Q5_1: return d * q + dmin;
    case DType::IQ4_NL: return d * kIQ4NL[q];
    case DType::Q2_K: case DType::Q4_K: case DType::Q5_K:
      return d * k.sc[size_t(i / ss)] * q - dmin * k.mn[size_t(i / ss)];
    case DType::Q3_K: case DType::Q6_K: return d * k.sc[size_t(i / ss)] * q;
    default: return d * q;
  }
}
inline float value(const Block& k, int i) { return float(level(k, i, k.q[size_t(i)])); }

}  // namespace qspec
