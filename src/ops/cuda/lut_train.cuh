// Device helpers of the LUT training kernels (lut_train.cu, votes.cu): single packed indices in
// the trainer's layout (train/lut_weight.h, quant/lut_pack.h), dispatch over the index widths,
// and launch sizes.
//
// Every width below 16 bits is a little-endian bit string: index i of a row sits at bits
// B*i .. B*i+B-1 of the row's bytes (LUT2 4 a byte, LUT3 8 in 3 bytes, LUT4 2 a byte, LUT5 8 in
// 5 bytes, LUT6 4 in 3 bytes, LUT8 1 a byte: each packing group is a little-endian word whose
// index k is at bits B*k, so the groups concatenate into one bit string). B <= 6 and a shift
// below 8 make every index lie within two bytes. LUT16 is two bytes, base (high) byte first.
// The trainer's rows are only a multiple of the packing group (not of 32), and need not be
// 4-byte aligned, so the kernels read bytes rather than the inference kernels' 32-bit words
// (formats.cuh LutWordCodes).
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "core/error.h"
#include "ops/cuda/buffer.h"

namespace primal::cuda::lut {

// Indices per packing group (core/dtype.cpp traits().block): a thread that owns whole groups
// owns whole bytes, so index writes of different threads never share a byte.
template <int B>
constexpr int kGroup = B == 2 ? 4 : B == 3 ? 8 : B == 4 ? 2 : B == 5 ? 8 : B == 6 ? 4 : 1;

template <int B>
__device__ __forceinline__ uint32_t get_index(const uint8_t* row, int64_t i) {
  if constexpr (B == 16) {
    return uint32_t(row[2 * i]) << 8 | uint32_t(row[2 * i + 1]);
  } else if constexpr (B == 8) {
    return row[i];
  } else {
    const int64_t bit = i * B;
    const uint8_t* p = row + (bit >> 3);
    const int sh = int(bit & 7);
    uint32_t x = p[0];
    if (sh + B > 8) x |= uint32_t(p[1]) << 8;  // the index crosses into the next byte
    return (x >> sh) & ((1u << B) - 1u);
  }
}

// The caller owns the bytes of index i (kGroup above).
template <int B>
__device__ __forceinline__ void set_index(uint8_t* row, int64_t i, uint32_t v) {
  if constexpr (B == 16) {
    row[2 * i] = uint8_t(v >> 8);
    row[2 * i + 1] = uint8_t(v & 255u);
  } else if constexpr (B == 8) {
    row[i] = uint8_t(v);
  } else {
    const int64_t bit = i * B;
    uint8_t* p = row + (bit >> 3);
    const int sh = int(bit & 7);
    const uint32_t mask = ((1u << B) - 1u) << sh;
    const bool two = sh + B > 8;
    uint32_t x = p[0] | (two ? uint32_t(p[1]) << 8 : 0u);
    x = (x & ~mask) | ((v << sh) & mask);
    p[0] = uint8_t(x & 255u);
    if (two) p[1] = uint8_t(x >> 8);
  }
}

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over `work` items: enough to fill the GPU, few enough that each
// thread loops a little.
inline int blocks_for(int64_t work) {
  const int64_t b = (work + kThreads - 1) / kThreads, cap = 16 * int64_t(sm_count());
  return int(std::max<int64_t>(1, std::min(b, cap)));
}

}  // namespace primal::cuda::lut

// Runs the statement macro LAUNCH(B) with the compile-time index width B equal to `bits`.
#define PRIMAL_LUT_BITS_SWITCH(bits, LAUNCH)                                   \
  switch (bits) {                                                              \
    case 2: LAUNCH(2); break;                                                  \
    case 3: LAUNCH(3); break;                                                  \
    case 4: LAUNCH(4); break;                                                  \
    case 5: LAUNCH(5); break;                                                  \
    case 6: LAUNCH(6); break;                                                  \
    case 8: LAUNCH(8); break;                                                  \
    case 16: LAUNCH(16); break;                                                \
    default: ::primal::fail("LUT training kernels: no index width {}", bits); \
  }
