// LUT index packing (quant/lut_pack.h): hand-built bytes for each width (LUT4 nibble order,
// LUT16 base and fine bytes, LUT3's 24-bit words), exact round trips, the dequantization formula
// value by value, and refusals.
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "core/error.h"
#include "core/half.h"
#include "quant/dequant.h"
#include "quant/lut_grid.h"
#include "quant/lut_pack.h"

using namespace primal;

namespace {
const DType kLut[] = {DType::LUT2, DType::LUT3, DType::LUT4, DType::LUT5, DType::LUT6, DType::LUT8, DType::LUT16};

std::vector<uint8_t> pack(DType t, const std::vector<uint16_t>& idx) {
  std::vector<uint8_t> out(row_bytes(t, int64_t(idx.size())), 0xEE);
  pack_lut_row(t, idx.data(), out.data(), int64_t(idx.size()));
  return out;
}
}  // namespace

TEST(LutPack, TraitsAndWidths) {
  EXPECT_EQ(row_bytes(DType::LUT2, 256), 64u);
  EXPECT_EQ(row_bytes(DType::LUT3, 256), 96u);
  EXPECT_EQ(row_bytes(DType::LUT4, 256), 128u);
  EXPECT_EQ(row_bytes(DType::LUT5, 256), 160u);
  EXPECT_EQ(row_bytes(DType::LUT6, 256), 192u);
  EXPECT_EQ(row_bytes(DType::LUT8, 256), 256u);
  EXPECT_EQ(row_bytes(DType::LUT16, 256), 512u);
  for (DType t : kLut) {
    EXPECT_TRUE(is_lut(t));
    EXPECT_EQ(lut_type_for_bits(lut_bits(t)), t);
    EXPECT_EQ(lut_entries(t), int64_t(1) << lut_bits(t));
    EXPECT_EQ(dtype_from_name(dtype_name(t)), t);
  }
  EXPECT_FALSE(is_lut(DType::IQ4_NL));
  EXPECT_THROW(lut_type_for_bits(7), Error);
  EXPECT_THROW(lut_bits(DType::Q4_0), Error);
}

TEST(LutPack, HandBuiltBytes) {
  // LUT4: index 2j in the low nibble, 2j+1 in the high one.
  EXPECT_EQ(pack(DType::LUT4, {1, 2, 15, 0}), (std::vector<uint8_t>{0x21, 0x0F}));
  // LUT16: base byte (idx >> 8) first, then the fine byte.
  EXPECT_EQ(pack(DType::LUT16, {0x1234, 0xFF01}), (std::vector<uint8_t>{0x12, 0x34, 0xFF, 0x01}));
  // LUT2: index 4j+k in bits 2k..2k+1.
  EXPECT_EQ(pack(DType::LUT2, {1, 2, 3, 0}), (std::vector<uint8_t>{0x39}));
  // LUT3: 8 indices in a little-endian 24-bit word, index k in bits 3k..3k+2:
  // 1 | 2<<3 | 3<<6 | 4<<9 | 5<<12 | 6<<15 | 7<<18 = 0x1F58D1.
  EXPECT_EQ(pack(DType::LUT3, {1, 2, 3, 4, 5, 6, 7, 0}), (std::vector<uint8_t>{0xD1, 0x58, 0x1F}));
  // LUT5: 8 indices in a little-endian 40-bit word, index k in bits 5k..5k+4:
  // 1 | 2<<5 | 3<<10 | 4<<15 | 5<<20 | 6<<25 | 7<<30 | 31<<35 = 0xF9CC520C41.
  EXPECT_EQ(pack(DType::LUT5, {1, 2, 3, 4, 5, 6, 7, 31}), (std::vector<uint8_t>{0x41, 0x0C, 0x52, 0xCC, 0xF9}));
  // LUT6: 4 indices in a little-endian 24-bit word, index k in bits 6k..6k+5:
  // 1 | 2<<6 | 63<<12 | 0<<18 = 0x03F081.
  EXPECT_EQ(pack(DType::LUT6, {1, 2, 63, 0}), (std::vector<uint8_t>{0x81, 0xF0, 0x03}));
  EXPECT_EQ(pack(DType::LUT8, {0, 255, 7}), (std::vector<uint8_t>{0, 255, 7}));
}

TEST(LutPack, RoundTripsExactly) {
  std::mt19937 rng(7);
  for (DType t : kLut) {
    const int64_t n = 8 * 37;
    std::uniform_int_distribution<int> pick(0, int(lut_entries(t)) - 1);
    std::vector<uint16_t> idx(static_cast<size_t>(n)), back(size_t(n), 0xFFFF);
    for (auto& i : idx) i = uint16_t(pick(rng));
    idx[0] = 0;
    idx[size_t(n) - 1] = uint16_t(lut_entries(t) - 1);
    const auto bytes = pack(t, idx);
    unpack_lut_row(t, bytes.data(), back.data(), n);
    EXPECT_EQ(back, idx) << dtype_name(t);
  }
}

TEST(LutPack, DequantizeIsScaleTimesGridValue) {
  std::mt19937 rng(11);
  for (DType t : kLut)
    for (int64_t group : {8, 32, 64, 256}) {
      const int64_t n = 256, K = lut_entries(t);
      const auto grid = nf4_grid(K);
      std::vector<uint16_t> idx(static_cast<size_t>(n));
      std::uniform_int_distribution<int> pick(0, int(K) - 1);
      for (auto& i : idx) i = uint16_t(pick(rng));
      std::vector<uint16_t> scale;
      for (int64_t k = 0; k < n / group; ++k) scale.push_back(f32_to_f16(0.01f * float(k + 1) * (k % 2 ? -1 : 1)));
      const auto bytes = pack(t, idx);
      std::vector<float> y(static_cast<size_t>(n));
      dequantize_lut_row(t, bytes.data(), scale.data(), group, grid.data(), y.data(), n);
      for (int64_t i = 0; i < n; ++i)
        ASSERT_EQ(y[size_t(i)], f16_to_f32(scale[size_t(i / group)]) * grid[idx[size_t(i)]])
            << dtype_name(t) << " group " << group << " at " << i;
    }
}

TEST(LutPack, Refusals) {
  std::vector<uint16_t> idx(16, 0);
  std::vector<uint8_t> out(64);
  idx[3] = 16;
  EXPECT_THROW(pack_lut_row(DType::LUT4, idx.data(), out.data(), 16), Error);  // index outside the grid
  idx[3] = 4;
  EXPECT_THROW(pack_lut_row(DType::LUT2, idx.data(), out.data(), 16), Error);
  EXPECT_THROW(pack_lut_row(DType::LUT4, idx.data(), out.data(), 15), Error);  // not whole pairs
  EXPECT_THROW(pack_lut_row(DType::LUT3, idx.data(), out.data(), 12), Error);
  EXPECT_THROW(pack_lut_row(DType::Q4_0, idx.data(), out.data(), 16), Error);
  std::vector<float> y(16), grid = uniform_grid(16);
  const uint16_t scale[2] = {0x3c00, 0x3c00};
  EXPECT_THROW(dequantize_lut_row(DType::LUT4, out.data(), scale, 6, grid.data(), y.data(), 16), Error);
  // A LUT row cannot be decoded from its bytes alone.
  EXPECT_FALSE(can_dequantize(DType::LUT4));
  EXPECT_THROW(dequantize_row(DType::LUT8, out.data(), y.data(), 16), Error);
}
