#include "quant/fp_exact.h"  // first: the product must equal IQ4_NL's/Q8_0's for exact export
#include "quant/lut_pack.h"

#include <vector>

#include "core/error.h"
#include "core/half.h"

namespace primal {

bool is_lut(DType t) {
  return t == DType::LUT2 || t == DType::LUT3 || t == DType::LUT4 || t == DType::LUT8 || t == DType::LUT16;
}

int lut_bits(DType t) {
  switch (t) {
    case DType::LUT2: return 2;
    case DType::LUT3: return 3;
    case DType::LUT4: return 4;
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
    case 8: return DType::LUT8;
    case 16: return DType::LUT16;
    default: fail("no LUT type of {} bits (2, 3, 4, 8, 16)", bits);
  }
}

namespace {

void check_row(DType t, int64_t n) {
  const int64_t block = traits(t).block;
  PRIMAL_CHECK(n >= 0 && n % block == 0, "{} row of {} indices is not a multiple of {}", dtype_name(t), n, block);
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
    case DType::LUT3:
      for (int64_t j = 0; j < n / 8; ++j) {
        uint32_t w = 0;
        for (int k = 0; k < 8; ++k) w |= uint32_t(idx[8 * j + k]) << (3 * k);
        dst[3 * j] = uint8_t(w), dst[3 * j + 1] = uint8_t(w >> 8), dst[3 * j + 2] = uint8_t(w >> 16);
      }
      break;
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
    case DType::LUT3:
      for (int64_t j = 0; j < n / 8; ++j) {
        const uint32_t w = uint32_t(src[3 * j]) | uint32_t(src[3 * j + 1]) << 8 | uint32_t(src[3 * j + 2]) << 16;
        for (int k = 0; k < 8; ++k) idx[8 * j + k] = uint16_t((w >> (3 * k)) & 7);
      }
      break;
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
