// Device-side decoding of every weight format the GPU reads, one 32-element "unit" at a time:
// unit u of row r holds columns 32u .. 32u+31 (a block of the legacy formats, a sub-block of
// Q4_K/Q5_K, an eighth of a K-quant super-block). For each format Unit<T>:
//   Raw                 the unit's bytes in registers;
//   load(row, u)        issues its loads (a few wide ones: see matrix.h for the layouts);
//   dot(raw, x)         sum_j W[r, 32u + j] * x[j] in fp32, with the block scales factored out of
//                       the sum (the same value up to fp32 rounding);
//   decode(raw, y)      y[0..32) = the dequantized weights, bit-identical to the CPU's
//                       dequantize_row (the same fp32 products and sums, never fused).
// kPrefetch: units per GEMV step (small raw formats: 2); kPrefetchDeep (optional): the same for
// matrices of few rows (gemv.cuh).
// kInt8: the GEMV quantizes its input to int8 per 32-element unit (x ~ dx * qx, dx = max|x| / 127,
// qx rounded to nearest, as llama.cpp's q8_1) and the format provides
//   dot8(raw, X, dx, sx0, sx1)  sum_j W[r, 32u + j] * dx * qx[j] with integer dot products (dp4a)
//                               of the codes: X the 8 words of 4 qx bytes, sx0 / sx1 the sums of
//                               qx over elements 0..15 / 16..31.
// That is 4-6x fewer instructions per weight than converting every weight to fp32, which is what
// keeps the small-code formats memory-bound; the price is the rounding of x to 8 bits.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "core/error.h"
#include "ops/cuda/matrix.h"

namespace primal::cuda::fmt {

// One row's parts, formed once per row so that the inner loop holds four pointers.
struct RowPtr {
  const uint8_t* q;
  const uint16_t* s;
  const uint32_t* qh;
  const uint8_t* sc;
  const float* grid;  // LUT types: the matrix's grid (global memory)
};
__device__ __forceinline__ RowPtr row_ptr(const MatrixView& w, int64_t r) {
  return {w.q + r * w.q_row, w.s + r * w.s_row, w.qh + r * w.qh_row, w.sc + r * w.sc_row, w.grid};
}

__device__ __forceinline__ uint4 ld16(const void* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }
__device__ __forceinline__ uint16_t ldh(const void* p) { return __ldg(reinterpret_cast<const unsigned short*>(p)); }
__device__ __forceinline__ uint32_t ldw(const void* p) { return __ldg(reinterpret_cast<const unsigned int*>(p)); }
__device__ __forceinline__ uint8_t ldb(const uint8_t* p) { return __ldg(p); }
__device__ __forceinline__ float h2f(uint16_t h) { return __half2float(__ushort_as_half(h)); }
__device__ __forceinline__ uint32_t word(const uint4& v, int i) { return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w; }

// Exact small integers as floats without the (quarter-rate) conversion unit: the mantissa of
// 2^23 = as_float(0x4B000000) holds an integer n < 2^23 exactly, as_float(0x4B000000 | n) - 2^23 = n.
constexpr float kTwo23 = 8388608.0f;
__device__ __forceinline__ float small_int(uint32_t n, float offset) {
  return __uint_as_float(0x4B000000u | n) - (kTwo23 + offset);
}
// Nibble k (0..7) of v minus offset.
__device__ __forceinline__ float nibble(uint32_t v, int shift, float offset) { return small_int((v >> shift) & 0xFu, offset); }
// Signed byte k of v: flip the sign bit (q + 128 as unsigned), one byte permute puts it under the
// exponent of 2^23, subtract 2^23 + 128.
__device__ __forceinline__ float sbyte(uint32_t v_flipped, int k) {
  return __uint_as_float(__byte_perm(v_flipped, 0x4B000000u, 0x7440u + unsigned(k))) - (kTwo23 + 128.0f);
}

// Element e (0..31) of a unit in the nibble layout: byte e % 16 of the 16 quant bytes, low nibble
// for e < 16. As (word, shift) of the uint4.
#define PRIMAL_NIB(q, e) nibble(word(q, ((e) % 16) / 4), 8 * ((e) % 4) + 4 * ((e) / 16), 0.0f)

template <DType T>
struct Unit;

// ---- float formats ---------------------------------------------------------------------------
template <>
struct Unit<DType::F32> {
  static constexpr int kPrefetch = 1;
  static constexpr bool kInt8 = false;
  struct Raw { float4 v[8]; };
  __device__ static Raw load(const RowPtr& p, int64_t u) {
    Raw r;
    const float4* s = reinterpret_cast<const float4*>(p.q + u * 128);
#pragma unroll
    for (int k = 0; k < 8; ++k) r.v[k] = __ldg(s + k);
    return r;
  }
  __device__ static void decode(const Raw& r, float* y) {
#pragma unroll
    for (int k = 0; k < 8; ++k) y[4 * k] = r.v[k].x, y[4 * k + 1] = r.v[k].y, y[4 * k + 2] = r.v[k].z, y[4 * k + 3] = r.v[k].w;
  }
  __device__ static float dot(const Raw& r, const float* x) {
    float a = 0;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      a = fmaf(r.v[k].x, x[4 * k], a), a = fmaf(r.v[k].y, x[4 * k + 1], a);
      a = fmaf(r.v[k].z, x[4 * k + 2], a), a = fmaf(r.v[k].w, x[4 * k + 3], a);
    }
    return a;
  }
};

template <DType T>
struct Unit16 {  // F16 and BF16: 64 bytes per unit
  static constexpr int kPrefetch = 1, kPrefetchDeep = 2;
  static constexpr bool kInt8 = false;
  struct Raw { uint4 v[4]; };
  __device__ static Raw load(const RowPtr& p, int64_t u) {
    Raw r;
#pragma unroll
    for (int k = 0; k < 4; ++k) r.v[k] = ld16(p.q + u * 64 + 16 * k);
    return r;
  }
  __device__ static void decode(const Raw& r, float* y) {
#pragma unroll
    for (int k = 0; k < 4; ++k) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const uint32_t b = word(r.v[k], i);
        if constexpr (T == DType::F16) {
          y[8 * k + 2 * i] = h2f(uint16_t(b & 0xFFFFu)), y[8 * k + 2 * i + 1] = h2f(uint16_t(b >> 16));
        } else {
          y[8 * k + 2 * i] = __uint_as_float(b << 16), y[8 * k + 2 * i + 1] = __uint_as_float(b & 0xFFFF0000u);
        }
      }
    }
  }
  __device__ static float dot(const Raw& r, const float* x) {
    float y[32];
    decode(r, y);
    float a0 = 0, a1 = 0;
#pragma unroll
    for (int j = 0; j < 32; j += 2) a0 = fmaf(y[j], x[j], a0), a1 = fmaf(y[j + 1], x[j + 1], a1);
    return a0 + a1;
  }
};
template <> struct Unit<DType::F16> : Unit16<DType::F16> {};
template <> struct Unit<DType::BF16> : Unit16<DType::BF16> {};

// ---- legacy 32-element blocks ------------------------------------------------------------------
template <>
struct Unit<DType::Q8_0> {
  static constexpr int kPrefetch = 1, kPrefetchDeep = 2;
  static constexpr bool kInt8 = true;
  struct Raw { uint4 a, b; uint16_t d; };
  __device__ static Raw load(const RowPtr& p, int64_t u) { return {ld16(p.q + u * 32), ld16(p.q + u * 32 + 16), ldh(p.s + u)}; }
  __device__ static void decode(const Raw& r, float* y) {
    const float d = h2f(r.d);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const uint32_t f = word(i < 4 ? r.a : r.b, i & 3) ^ 0x80808080u;
#pragma unroll
      for (int k = 0; k < 4; ++k) y[4 * i + k] = __fmul_rn(sbyte(f, k), d);
    }
  }
  __device__ static float dot(const Raw& r, const float* x) {
    float a0 = 0, a1 = 0;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const uint32_t f = word(i < 4 ? r.a : r.b, i & 3) ^ 0x80808080u;
      a0 = fmaf(sbyte(f, 0), x[4 * i], a0), a1 = fmaf(sbyte(f, 1), x[4 * i + 1], a1);
      a0 = fmaf(sbyte(f, 2), x[4 * i + 2], a0), a1 = fmaf(sbyte(f, 3), x[4 * i + 3], a1);
    }
    return (a0 + a1) * h2f(r.d);
  }
  __device__ static float dot8(const Raw& r, const uint32_t* X, float dx, int, int) {
    int sum = 0;
#pragma unroll
    for (int i = 0; i < 8; ++i) sum = __dp4a(int(word(i < 4 ? r.a : r.b, i & 3)), int(X[i]), sum);
    return float(sum) * (dx * h2f(r.d));
  }
};

template <>
struct Unit<DType::Q4_0> {
  static constexpr int kPrefetch = 2, kPrefetchDeep = 4;
  static constexpr bool kInt8 = true;
  struct Raw { uint4 q; uint16_t d; };
  __device__ static Raw load(const RowPtr& p, int64_t u) { return {ld16(p.q + u * 16), ldh(p.s + u)}; }
  __device__ static void decode(const Raw& r, float* y) {
    const float d = h2f(r.d);
#pragma unroll
    for (int e = 0; e < 32; ++e) y[e] = __fmul_rn(PRIMAL_NIB(r.q, e) - 8.0f, d);
  }
  __device__ static float dot(const Raw& r, const float* x) {
    float a0 = 0, a1 = 0;
#pragma unroll
    for (int e = 0; e < 16; ++e) {
      a0 = fmaf(nibble(word(r.q, e / 4), 8 * (e % 4), 8.0f), x[e], a0);
      a1 = fmaf(nibble(word(r.q, e / 4), 8 * (e % 4) + 4, 8.0f), x[16 + e], a1);
    }
    return (a0 + a1) * h2f(r.d);
  }
  // codes 0..15 stand for q - 8: sum (q - 8) qx = sum q qx - 8 sum qx.
  __device__ static float dot8(const Raw& r, const uint32_t* X, float dx, int sx0, int sx1) {
    int sum = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      sum = __dp4a(int(word(r.q, i) & 0x0F0F0F0Fu), int(X[i]), sum);
      sum = __dp4a(int((word(r.q, i) >> 4) & 0x0F0F0F0Fu), int(X[4 + i]), sum);
    }
    return float(sum - 8 * (sx0 + sx1)) * (dx * h2f(r.d));
  }
};

template <>
struct Unit<DType::IQ4_NL> {
  static constexpr int kPrefetch = 2;
  static constexpr bool kInt8 = false;
  struct Raw { uint4 q; uint16_t d; };
  // The level of code n: two byte permutes over the table held in four registers (a per-lane
  // index into constant memory would serialize the warp).
  __device__ static float level(uint32_t v, int shift) {
    constexpr uint32_t t0 = 0xBFAD9881u, t1 = 0xF6EADDCFu, t2 = 0x26190D01u, t3 = 0x71594535u;  // kvalues_iq4nl
    const uint32_t n = (v >> shift) & 0xFu;
    const uint32_t lo = __byte_perm(t0, t1, n & 7u), hi = __byte_perm(t2, t3, n & 7u);
    return float(int8_t((n & 8u) ? hi : lo));
  }
  __device__ static Raw load(const RowPtr& p, int64_t u) { return {ld16(p.q + u * 16), ldh(p.s + u)}; }
  __device__ static void decode(const Raw& r, float* y) {
    const float d = h2f(r.d);
#pragma unroll
    for (int e = 0; e < 32; ++e) y[e] = __fmul_rn(d, level(word(r.q, (e % 16) / 4), 8 * (e % 4) + 4 * (e / 16)));
  }
  __device__ static float dot(const Raw& r, const float* x) {
    float a = 0;
#pragma unroll
    for (int e = 0; e < 32; ++e) a = fmaf(level(word(r.q, (e % 16) / 4), 8 * (e % 4) + 4 * (e / 16)), x[e], a);
    return a * h2f(r.d);
  }
};

// x = q d + m (Q4_1) and the 5-bit variants: the dot is d sum(q x) + m sum(x).
template <bool kHigh, bool kMin>
struct UnitQ45 {
  static constexpr int kPrefetch = 2;
  static constexpr bool kInt8 = false;
  struct Raw { uint4 q; uint32_t dm; uint32_t qh; };
  __device__ static Raw load(const RowPtr& p, int64_t u) {
    Raw r;
    r.q = ld16(p.q + u * 16);
    r.dm = kMin ? ldw(p.s + 2 * u) : ldh(p.s + u);
    r.qh = kHigh ? __ldg(p.qh + u) : 0u;
    return r;
  }
  __device__ static uint32_t code(const Raw& r, int e) {
    const uint32_t lo = (word(r.q, (e % 16) / 4) >> (8 * (e % 4) + 4 * (e / 16))) & 0xFu;
    return kHigh ? lo | ((r.qh >> e) & 1u) << 4 : lo;
  }
  __device__ static void decode(const Raw& r, float* y) {
    const float d = h2f(uint16_t(r.dm & 0xFFFFu)), m = h2f(uint16_t(r.dm >> 16));
    const float off = kMin ? 0.0f : (kHigh ? 16.0f : 8.0f);
#pragma unroll
    for (int e = 0; e < 32; ++e) {
      const float q = small_int(code(r, e), off);
      y[e] = kMin ? __fadd_rn(__fmul_rn(q, d), m) : __fmul_rn(q, d);
    }
  }
  __device__ static float dot(const Raw& r, const float* x) {
    const float off = kMin ? 0.0f : (kHigh ? 16.0f : 8.0f);
    float aq = 0, ax = 0;
#pragma unroll
    for (int e = 0; e < 32; ++e) {
      aq = fmaf(small_int(code(r, e), off), x[e], aq);
      if (kMin) ax += x[e];
    }
    const float d = h2f(uint16_t(r.dm & 0xFFFFu));
    return kMin ? fmaf(aq, d, ax * h2f(uint16_t(r.dm >> 16))) : aq * d;
  }
};
template <> struct Unit<DType::Q4_1> : UnitQ45<false, true> {};
template <> struct Unit<DType::Q5_0> : UnitQ45<true, false> {};
template <> struct Unit<DType::Q5_1> : UnitQ45<true, true> {};

// ---- K-quants ----------------------------------------------------------------------------------
// Q4_K / Q5_K: unit = sub-block; x = (d sc) q - (dmin m).
template <bool kHigh>
struct UnitQK45 {
  static constexpr int kPrefetch = 2;
  static constexpr bool kInt8 = !kHigh;  // Q4_K (Q5_K's fifth bit would need spreading)
  struct Raw { uint4 q; uint32_t dm; uint16_t scm; uint32_t qh; };
  __device__ static Raw load(const RowPtr& p, int64_t u) {
    Raw r;
    r.q = ld16(p.q + u * 16);
    r.dm = ldw(p.s + 2 * (u / 8));
    r.scm = ldh(p.sc + 2 * u);
    r.qh = kHigh ? __ldg(p.qh + u) : 0u;
    return r;
  }
  __device__ static uint32_t code(const Raw& r, int e) {
    const uint32_t lo = (word(r.q, (e % 16) / 4) >> (8 * (e % 4) + 4 * (e / 16))) & 0xFu;
    return kHigh ? lo | ((r.qh >> e) & 1u) << 4 : lo;
  }
  __device__ static void scales(const Raw& r, float* dl, float* ml) {
    *dl = __fmul_rn(h2f(uint16_t(r.dm & 0xFFFFu)), float(r.scm & 0xFFu));
    *ml = __fmul_rn(h2f(uint16_t(r.dm >> 16)), float(r.scm >> 8));
  }
  __device__ static void decode(const Raw& r, float* y) {
    float dl, ml;
    scales(r, &dl, &ml);
#pragma unroll
    for (int e = 0; e < 32; ++e) y[e] = __fsub_rn(__fmul_rn(dl, small_int(code(r, e), 0.0f)), ml);
  }
  __device__ static float dot(const Raw& r, const float* x) {
    float aq = 0, ax = 0;
#pragma unroll
    for (int e = 0; e < 32; ++e) aq = fmaf(small_int(code(r, e), 0.0f), x[e], aq), ax += x[e];
    float dl, ml;
    scales(r, &dl, &ml);
    return fmaf(aq, dl, -ax * ml);
  }
  __device__ static float dot8(const Raw& r, const uint32_t* X, float dx, int sx0, int sx1) {
    int sum = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      sum = __dp4a(int(word(r.q, i) & 0x0F0F0F0Fu), int(X[i]), sum);
      sum = __dp4a(int((word(r.q, i) >> 4) & 0x0F0F0F0Fu), int(X[4 + i]), sum);
    }
    float dl, ml;
    scales(r, &dl, &ml);
    return dx * fmaf(float(sum), dl, -float(sx0 + sx1) * ml);
  }
};
template <> struct Unit<DType::Q4_K> : UnitQK45<false> {};
template <> struct Unit<DType::Q5_K> : UnitQK45<true> {};

// Q6_K: two sub-blocks of 16 per unit; x = (d sc) (q - 32), q = low nibble | 2 high bits << 4.
template <>
struct Unit<DType::Q6_K> {
  static constexpr int kPrefetch = 2;
  static constexpr bool kInt8 = true;
  struct Raw { uint4 q; uint2 qh; uint16_t sc; uint16_t d; };
  __device__ static Raw load(const RowPtr& p, int64_t u) {
    Raw r;
    r.q = ld16(p.q + u * 16);
    r.qh = __ldg(reinterpret_cast<const uint2*>(p.qh) + u);
    r.sc = ldh(p.sc + 2 * u);
    r.d = ldh(p.s + u / 8);
    return r;
  }
  // The top 2 bits of element 16 h + 4 i + k sit at bits 8 k + 2 i of word h (matrix.h), so that
  // one shift and one mask put those of 4 elements at bits 4..5 of their bytes (dot8).
  __device__ static uint32_t code(const Raw& r, int e) {
    const int h = e / 16, i = (e % 16) / 4, k = e % 4;
    const uint32_t lo = (word(r.q, i) >> (8 * k + 4 * h)) & 0xFu;
    const uint32_t hw = h ? r.qh.y : r.qh.x;
    return lo | ((hw >> (8 * k + 2 * i)) & 3u) << 4;
  }
  __device__ static void decode(const Raw& r, float* y) {
    const float d = h2f(r.d);
    const float s0 = __fmul_rn(d, float(int8_t(r.sc & 0xFFu))), s1 = __fmul_rn(d, float(int8_t(r.sc >> 8)));
#pragma unroll
    for (int e = 0; e < 32; ++e) y[e] = __fmul_rn(e < 16 ? s0 : s1, small_int(code(r, e), 32.0f));
  }
  __device__ static float dot(const Raw& r, const float* x) {
    float a0 = 0, a1 = 0;
#pragma unroll
    for (int e = 0; e < 16; ++e) {
      a0 = fmaf(small_int(code(r, e), 32.0f), x[e], a0);
      a1 = fmaf(small_int(code(r, e + 16), 32.0f), x[e + 16], a1);
    }
    const float d = h2f(r.d);
    return fmaf(a0, __fmul_rn(d, float(int8_t(r.sc & 0xFFu))), a1 * __fmul_rn(d, float(int8_t(r.sc >> 8))));
  }
  __device__ static float dot8(const Raw& r, const uint32_t* X, float dx, int sx0, int sx1) {
    int s0 = 0, s1 = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int sh = 4 - 2 * i;  // the top bits of word i's elements to bits 4..5
      const uint32_t h0 = (sh >= 0 ? r.qh.x << sh : r.qh.x >> -sh) & 0x30303030u;
      const uint32_t h1 = (sh >= 0 ? r.qh.y << sh : r.qh.y >> -sh) & 0x30303030u;
      s0 = __dp4a(int((word(r.q, i) & 0x0F0F0F0Fu) | h0), int(X[i]), s0);
      s1 = __dp4a(int(((word(r.q, i) >> 4) & 0x0F0F0F0Fu) | h1), int(X[4 + i]), s1);
    }
    // codes 0..63 stand for q - 32; the sub-block scales are int8
    const int t = int(int8_t(r.sc & 0xFFu)) * (s0 - 32 * sx0) + int(int8_t(r.sc >> 8)) * (s1 - 32 * sx1);
    return float(t) * (dx * h2f(r.d));
  }
};

// Q2_K / Q3_K stay in ggml's super-blocks; the raw form is the decoded unit (rare formats).
__device__ __forceinline__ float h2f_bytes(const uint8_t* p) { return h2f(uint16_t(ldb(p) | (ldb(p + 1) << 8))); }

template <DType T>
struct UnitDecoded {
  static constexpr int kPrefetch = 1;
  static constexpr bool kInt8 = false;
  struct Raw { float y[32]; };
  __device__ static void decode(const Raw& r, float* y) {
#pragma unroll
    for (int e = 0; e < 32; ++e) y[e] = r.y[e];
  }
  __device__ static float dot(const Raw& r, const float* x) {
    float a = 0;
#pragma unroll
    for (int e = 0; e < 32; ++e) a = fmaf(r.y[e], x[e], a);
    return a;
  }
};

template <>
struct Unit<DType::Q2_K> : UnitDecoded<DType::Q2_K> {
  __device__ static Raw load(const RowPtr& p, int64_t u) {  // scales (16) qs (64) d dmin
    Raw r;
    const uint8_t* b = p.q + (u / 8) * 84;
    const int g8 = int(u % 8), h = g8 / 4, g = g8 % 4;
    const float d = h2f_bytes(b + 80), dmin = h2f_bytes(b + 82);
    const uint8_t* q = b + 16 + 32 * h;
#pragma unroll
    for (int s = 0; s < 2; ++s) {
      const uint8_t sc = ldb(b + 8 * h + 2 * g + s);
      const float dl = __fmul_rn(d, float(sc & 0xF)), ml = __fmul_rn(dmin, float(sc >> 4));
#pragma unroll
      for (int l = 0; l < 16; ++l) r.y[16 * s + l] = __fsub_rn(__fmul_rn(dl, float((ldb(q + 16 * s + l) >> (2 * g)) & 3)), ml);
    }
    return r;
  }
};

template <>
struct Unit<DType::Q3_K> : UnitDecoded<DType::Q3_K> {
  __device__ static Raw load(const RowPtr& p, int64_t u) {  // hmask (32) qs (64) scales (12) d
    Raw r;
    const uint8_t* b = p.q + (u / 8) * 110;
    const int g8 = int(u % 8), h = g8 / 4, g = g8 % 4;
    const float d = h2f_bytes(b + 108);
    const uint8_t* q = b + 32 + 32 * h;
    const uint8_t* sb = b + 96;
    const uint8_t mask = uint8_t(1u << (4 * h + g));
#pragma unroll
    for (int s = 0; s < 2; ++s) {
      const int j = 8 * h + 2 * g + s;
      const int lo = j < 8 ? ldb(sb + j) & 0xF : ldb(sb + j - 8) >> 4;
      const int hi = (ldb(sb + 8 + j % 4) >> (2 * (j / 4))) & 3;
      const float dl = __fmul_rn(d, float((lo | hi << 4) - 32));
#pragma unroll
      for (int l = 0; l < 16; ++l) {
        const int rr = 16 * s + l;
        const int v = ((ldb(q + rr) >> (2 * g)) & 3) - ((ldb(b + rr) & mask) ? 0 : 4);
        r.y[rr] = __fmul_rn(dl, float(v));
      }
    }
    return r;
  }
};

// ---- LUT formats (quant/lut_pack.h) ------------------------------------------------------------
// W = s * grid[idx]: the unit's fp16 scale (one per unit, matrix.h) times the grid value, one fp32
// product as on the CPU. LutCodes<T> holds a unit's packed indices (Q) and extracts index e.
// kGrid: grid values the GEMV stages in shared memory, per segment, and passes to dot (the
// lookups of a warp then cost one shared load each: 16 values sit in 16 banks, no conflicts);
// LUT16's 65536 values do not fit and are read through the cache from global memory.
template <DType T>
struct LutCodes;

template <>
struct LutCodes<DType::LUT4> {  // 16 bytes: index e in nibble e % 2 of byte e / 2
  static constexpr int kPrefetch = 2;
  struct Q { uint4 q; };
  __device__ static Q load(const uint8_t* row, int64_t u) { return {ld16(row + 16 * u)}; }
  __device__ static uint32_t idx(const Q& c, int e) { return (word(c.q, e / 8) >> (4 * (e % 8))) & 0xFu; }
};

template <>
struct LutCodes<DType::LUT8> {  // 32 bytes: index e = byte e
  static constexpr int kPrefetch = 1;
  struct Q { uint4 a, b; };
  __device__ static Q load(const uint8_t* row, int64_t u) { return {ld16(row + 32 * u), ld16(row + 32 * u + 16)}; }
  __device__ static uint32_t idx(const Q& c, int e) {
    return (word(e < 16 ? c.a : c.b, (e % 16) / 4) >> (8 * (e % 4))) & 0xFFu;
  }
};

template <>
struct LutCodes<DType::LUT2> {  // 8 bytes: index e in bits 2e..2e+1 of the 64-bit unit
  static constexpr int kPrefetch = 2;
  struct Q { uint2 q; };
  __device__ static Q load(const uint8_t* row, int64_t u) {
    return {__ldg(reinterpret_cast<const uint2*>(row + 8 * u))};
  }
  __device__ static uint32_t idx(const Q& c, int e) { return ((e < 16 ? c.q.x : c.q.y) >> (2 * (e % 16))) & 3u; }
};

// LUT3/LUT5/LUT6: a unit of 32 B-bit indices is B 32-bit words (12/20/24 bytes, so rows stay
// 4-aligned), index e in bits B*e..B*e+B-1 of the little-endian bit string.
template <int B>
struct LutWordCodes {
  static constexpr int kPrefetch = 2;
  struct Q { uint32_t w[B]; };
  __device__ static Q load(const uint8_t* row, int64_t u) {
    const uint8_t* p = row + 4 * B * u;
    Q c;
#pragma unroll
    for (int k = 0; k < B; ++k) c.w[k] = ldw(p + 4 * k);
    return c;
  }
  __device__ static uint32_t idx(const Q& c, int e) {
    const int k = B * e / 32, sh = B * e % 32;
    return (sh <= 32 - B ? c.w[k] >> sh : __funnelshift_r(c.w[k], c.w[k + 1], sh)) & ((1u << B) - 1);
  }
};
template <> struct LutCodes<DType::LUT3> : LutWordCodes<3> {};
template <> struct LutCodes<DType::LUT5> : LutWordCodes<5> {};
template <> struct LutCodes<DType::LUT6> : LutWordCodes<6> {};

template <>
struct LutCodes<DType::LUT16> {  // 64 bytes: index e = byte 2e << 8 | byte 2e+1
  static constexpr int kPrefetch = 1;
  struct Q { uint4 v[4]; };
  __device__ static Q load(const uint8_t* row, int64_t u) {
    Q c;
#pragma unroll
    for (int k = 0; k < 4; ++k) c.v[k] = ld16(row + 64 * u + 16 * k);
    return c;
  }
  __device__ static uint32_t idx(const Q& c, int e) {
    return __byte_perm(word(c.v[e / 8], (e % 8) / 2), 0u, e % 2 ? 0x4423u : 0x4401u);
  }
};

template <DType T>
struct UnitLut {
  using C = LutCodes<T>;
  static constexpr int kPrefetch = C::kPrefetch;
  static constexpr bool kInt8 = false;
  static constexpr int kGrid = T == DType::LUT16 ? 0
                               : 1 << (T == DType::LUT2   ? 2
                                       : T == DType::LUT3 ? 3
                                       : T == DType::LUT4 ? 4
                                       : T == DType::LUT5 ? 5
                                       : T == DType::LUT6 ? 6
                                                          : 8);
  struct Raw { typename C::Q c; uint16_t d; const float* grid; };
  __device__ static Raw load(const RowPtr& p, int64_t u) { return {C::load(p.q, u), ldh(p.s + u), p.grid}; }
  __device__ static void decode(const Raw& r, float* y) {
    const float d = h2f(r.d);
#pragma unroll
    for (int e = 0; e < 32; ++e) y[e] = __fmul_rn(d, __ldg(r.grid + C::idx(r.c, e)));
  }
  // g: the grid (shared memory when kGrid > 0, else the global one).
  __device__ static float dot(const Raw& r, const float* x, const float* g) {
    float a0 = 0, a1 = 0;
#pragma unroll
    for (int e = 0; e < 32; e += 2) {
      a0 = fmaf(g[C::idx(r.c, e)], x[e], a0);
      a1 = fmaf(g[C::idx(r.c, e + 1)], x[e + 1], a1);
    }
    return (a0 + a1) * h2f(r.d);
  }
  __device__ static float dot(const Raw& r, const float* x) { return dot(r, x, r.grid); }
};
template <> struct Unit<DType::LUT2> : UnitLut<DType::LUT2> {};
template <> struct Unit<DType::LUT3> : UnitLut<DType::LUT3> {};
template <> struct Unit<DType::LUT4> : UnitLut<DType::LUT4> {};
template <> struct Unit<DType::LUT5> : UnitLut<DType::LUT5> {};
template <> struct Unit<DType::LUT6> : UnitLut<DType::LUT6> {};
template <> struct Unit<DType::LUT8> : UnitLut<DType::LUT8> {
  static constexpr int kPrefetchDeep = 2;
};
template <> struct Unit<DType::LUT16> : UnitLut<DType::LUT16> {};

#undef PRIMAL_NIB

}  // namespace primal::cuda::fmt

// Runs the statement macro LAUNCH(T) for the compile-time format T equal to the runtime `type`;
// throws for a type without GPU kernels.
#define PRIMAL_FORMAT_SWITCH(type, LAUNCH)                                          \
  switch (type) {                                                                   \
    case ::primal::DType::F32: LAUNCH(::primal::DType::F32); break;                 \
    case ::primal::DType::F16: LAUNCH(::primal::DType::F16); break;                 \
    case ::primal::DType::BF16: LAUNCH(::primal::DType::BF16); break;               \
    case ::primal::DType::Q4_0: LAUNCH(::primal::DType::Q4_0); break;               \
    case ::primal::DType::Q4_1: LAUNCH(::primal::DType::Q4_1); break;               \
    case ::primal::DType::Q5_0: LAUNCH(::primal::DType::Q5_0); break;               \
    case ::primal::DType::Q5_1: LAUNCH(::primal::DType::Q5_1); break;               \
    case ::primal::DType::Q8_0: LAUNCH(::primal::DType::Q8_0); break;               \
    case ::primal::DType::IQ4_NL: LAUNCH(::primal::DType::IQ4_NL); break;           \
    case ::primal::DType::Q2_K: LAUNCH(::primal::DType::Q2_K); break;               \
    case ::primal::DType::Q3_K: LAUNCH(::primal::DType::Q3_K); break;               \
    case ::primal::DType::Q4_K: LAUNCH(::primal::DType::Q4_K); break;               \
    case ::primal::DType::Q5_K: LAUNCH(::primal::DType::Q5_K); break;               \
    case ::primal::DType::Q6_K: LAUNCH(::primal::DType::Q6_K); break;               \
    case ::primal::DType::LUT2: LAUNCH(::primal::DType::LUT2); break;               \
    case ::primal::DType::LUT3: LAUNCH(::primal::DType::LUT3); break;               \
    case ::primal::DType::LUT4: LAUNCH(::primal::DType::LUT4); break;               \
    case ::primal::DType::LUT5: LAUNCH(::primal::DType::LUT5); break;               \
    case ::primal::DType::LUT6: LAUNCH(::primal::DType::LUT6); break;               \
    case ::primal::DType::LUT8: LAUNCH(::primal::DType::LUT8); break;               \
    case ::primal::DType::LUT16: LAUNCH(::primal::DType::LUT16); break;             \
    default: ::primal::fail("no GPU kernel for {}", ::primal::dtype_name(type));    \
  }
