#include "quant/fp_exact.h"  // first: the product must equal IQ4_NL's/Q8_0's for exact export
#include "quant/lut_pack.h"

#include <vector>

#include "core/error.h"
#include "core/half.h"

namespace primal {

bool is_lut(DType t) {
  return t == DType::LUT2 || t == DType::LUT3 || t == DType::LUT4 || t == DType::LUT5 || t == DType::LUT6 ||
         t == DType::LUT8 || t == DType::LUT16;
}

int lut_bits(DType t) {
  switch (t) {
    case DType::LUT2: return 2;
    case DType::LUT3: return 3;
    case DType::LUT4: return 4;
    case DType::LUT5: return 5;
    case DType::LUT6: return 6;
    case DType::LUT8: return 8;
    case DType::LUT16: return 16;
    default: fail("{} is not a LUT type", dtype_name(t));
  }
}

int64_t lut_entries(DType t) { return int64_t(1) << lut_bits(t); }

DType lut_type_for_bits(int bits) {
  switch (bits) {
    case 2: return DType::LUT2;
    case 3: return DType::LUT3;
    case 4: return DType::LUT4;
    case 5: return DType::LUT5;
    case 6: return DType::LUT6;
    case 8: return DType::LUT8;
    case 16: return DType::LUT16;
    default: fail("no LUT type of {} bits (2, 3, 4, 5, 6, 8, 16)", bits);
  }
}

namespace {

void check_row(DType t, int64_t n) {
  const int64_t block = traits(t).block;
  PRIMAL_CHECK(n >= 0 && n % block == 0, "{} row of {} indices is not a multiple of {}", dtype_name(t), n, block);
}

// LUT3, LUT5, LUT6: blocks of `per` indices in `nb` bytes, read as one little-endian word of at
// most 40 bits with index per*j+k in bits b*k..b*k+b-1 (b = the width).
void pack_words(DType t, const uint16_t* idx, uint8_t* dst, int64_t n) {
  const int b = lut_bits(t), per = int(traits(t).block), nb = int(traits(t).block_bytes);
  for (int64_t j = 0; j < n / per; ++j) {
    uint64_t w = 0;
    for (int k = 0; k < per; ++k) w |= uint64_t(idx[per * j + k]) << (b * k);
    for (int q = 0; q < nb; ++q) dst[nb * j + q] = uint8_t(w >> (8 * q));
  }
}

void unpack_words(DType t, const uint8_t* src, uint16_t* idx, int64_t n) {
  const int b = lut_bits(t), per = int(traits(t).block), nb = int(traits(t).block_bytes);
  const uint64_t mask = (uint64_t(1) << b) - 1;
  for (int64_t j = 0; j < n / per; ++j) {
    uint64_t w = 0;
    for (int q = 0; q < nb; ++q) w |= uint64_t(src[nb * j + q]) << (8 * q);
    for (int k = 0; k < per; ++k) idx[per * j + k] = uint16_t((w >> (b * k)) & mask);
  }
}

}  // namespace

void pack_lut_row(DType t, const uint16_t* idx, uint8_t* dst, int64_t n) {
  check_row(t, n);
  const int64_t K = lut_entries(t);
  for (int64_t i = 0; i < n; ++i)
    PRIMAL_CHECK(idx[i] < K, "{}: index {} at position {} is outside the grid of {}", dtype_name(t), idx[i], i, K);
  switch (t) {
    case DType::LUT2:
      for (int64_t j = 0; j < n / 4; ++j)
        dst[j] = uint8_t(idx[4 * j] | idx[4 * j + 1] << 2 | idx[4 * j + 2] << 4 | idx[4 * j + 3] << 6);
      break;
    case DType::LUT3: case DType::LUT5: case DType::LUT6: pack_words(t, idx, dst, n); break;
    case DType::LUT4:
      for (int64_t j = 0; j < n / 2; ++j) dst[j] = uint8_t(idx[2 * j] | idx[2 * j + 1] << 4);
      break;
    case DType::LUT8:
      for (int64_t j = 0; j < n; ++j) dst[j] = uint8_t(idx[j]);
      break;
    case DType::LUT16:
      for (int64_t j = 0; j < n; ++j) dst[2 * j] = uint8_t(idx[j] >> 8), dst[2 * j + 1] = uint8_t(idx[j]);
      break;
    default: fail("{} is not a LUT type", dtype_name(t));
  }
}

void unpack_lut_row(DType t, const uint8_t* src, uint16_t* idx, int64_t n) {
  check_row(t, n);
  switch (t) {
    case DType::LUT2:
      for (int64_t j = 0; j < n / 4; ++j)
        for (int k = 0; k < 4; ++k) idx[4 * j + k] = uint16_t((src[j] >> (2 * k)) & 3);
      break;
    case DType::LUT3: case DType::LUT5: case DType::LUT6: unpack_words(t, src, idx, n); break;
    case DType::LUT4:
      for (int64_t j = 0; j < n / 2; ++j) idx[2 * j] = src[j] & 15, idx[2 * j + 1] = src[j] >> 4;
      break;
    case DType::LUT8:
      for (int64_t j = 0; j < n; ++j) idx[j] = src[j];
      break;
    case DType::LUT16:
      for (int64_t j = 0; j < n; ++j) idx[j] = uint16_t(src[2 * j] << 8 | src[2 * j + 1]);
      break;
    default: fail("{} is not a LUT type", dtype_name(t));
  }
}

void dequantize_lut_row(DType t, const uint8_t* src, const uint16_t* scale, int64_t group, const float* grid,
                        float* dst, int64_t n) {
  PRIMAL_CHECK(group > 0 && n % group == 0, "{}: row of {} is not a whole number of groups of {}", dtype_name(t), n,
               group);
  check_row(t, n);
  // The common widths decode in place without an index buffer (this runs once per weight row
  // in every matmul).
  if (t == DType::LUT4 && group % 2 == 0) {
    for (int64_t g = 0; g < n / group; ++g) {
      const float s = f16_to_f32(scale[g]);
      const uint8_t* b = src + g * group / 2;
      float* y = dst + g * group;
      for (int64_t j = 0; j < group / 2; ++j) {
        y[2 * j] = s * grid[b[j] & 15];
        y[2 * j + 1] = s * grid[b[j] >> 4];
      }
    }
    return;
  }
  if (t == DType::LUT8) {
    for (int64_t g = 0; g < n / group; ++g) {
      const float s = f16_to_f32(scale[g]);
      for (int64_t j = g * group; j < (g + 1) * group; ++j) dst[j] = s * grid[src[j]];
    }
    return;
  }
  std::vector<uint16_t> idx(static_cast<size_t>(n));
  unpack_lut_row(t, src, idx.data(), n);
  for (int64_t g = 0; g < n / group; ++g) {
    const float s = f16_to_f32(scale[g]);
    for (int64_t j = g * group; j < (g + 1) * group; ++j) dst[j] = s * grid[idx[size_t(j)]];
  }
}

}  // namespace primal
