// Dequantization of hand-built blocks: bytes chosen by the test, expected floats from each
// format's formula (tests/quant_spec.h), compared bit for bit. Plus the error paths.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/half.h"
#include "quant/blocks.h"
#include "quant/dequant.h"
#include "quant_spec.h"

using namespace primal;

namespace {

const DType kBlockTypes[] = {DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0, DType::IQ4_NL,
                             DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K};

std::vector<float> deq(DType t, const std::vector<uint8_t>& bytes, int64_t n) {
  std::vector<float> out(size_t(n), -999.f);
  dequantize_row(t, bytes.data(), out.data(), n);
  return out;
}

// A block of type t with every code and scale in range, the extremes always present, and the
// given fp16 scales; codes and scales vary with `seed`.
qspec::Block make_block(DType t, uint32_t seed, float d, float dmin) {
  std::mt19937 rng(seed);
  qspec::Block k;
  k.type = t;
  k.d = f32_to_f16(d);
  if (qspec::has_mins(t) || t == DType::Q4_1 || t == DType::Q5_1) k.dmin = f32_to_f16(dmin);
  int lo, hi;
  qspec::code_range(t, &lo, &hi);
  std::uniform_int_distribution<int> code(lo, hi);
  for (int i = 0; i < qspec::block_size(t); ++i) k.q.push_back(code(rng));
  k.q[0] = lo;
  k.q[1] = hi;
  k.q[size_t(qspec::block_size(t)) - 1] = hi;  // the last element, far in the packing
  if (qspec::sub_size(t)) {
    const int nsub = qspec::block_size(t) / qspec::sub_size(t);
    qspec::scale_range(t, &lo, &hi);
    std::uniform_int_distribution<int> scale(lo, hi), mn(0, hi);  // mins are unsigned, same width
    for (int j = 0; j < nsub; ++j) k.sc.push_back(scale(rng));
    k.sc[0] = lo;
    k.sc[size_t(nsub) - 1] = hi;
    k.sc[size_t(nsub) / 2] = hi;
    if (qspec::has_mins(t)) {
      for (int j = 0; j < nsub; ++j) k.mn.push_back(mn(rng));
      k.mn[1] = 0;
      k.mn[size_t(nsub) - 2] = hi;
    }
  }
  return k;
}

}  // namespace

TEST(QuantBlocks, StructSizesMatchDtypeTable) {
  EXPECT_EQ(traits(DType::Q4_0).block_bytes, sizeof(BlockQ4_0));
  EXPECT_EQ(traits(DType::Q4_1).block_bytes, sizeof(BlockQ4_1));
  EXPECT_EQ(traits(DType::Q5_0).block_bytes, sizeof(BlockQ5_0));
  EXPECT_EQ(traits(DType::Q5_1).block_bytes, sizeof(BlockQ5_1));
  EXPECT_EQ(traits(DType::Q8_0).block_bytes, sizeof(BlockQ8_0));
  EXPECT_EQ(traits(DType::IQ4_NL).block_bytes, sizeof(BlockIQ4_NL));
  EXPECT_EQ(traits(DType::Q2_K).block_bytes, sizeof(BlockQ2_K));
  EXPECT_EQ(traits(DType::Q3_K).block_bytes, sizeof(BlockQ3_K));
  EXPECT_EQ(traits(DType::Q4_K).block_bytes, sizeof(BlockQ4_K));
  EXPECT_EQ(traits(DType::Q5_K).block_bytes, sizeof(BlockQ5_K));
  EXPECT_EQ(traits(DType::Q6_K).block_bytes, sizeof(BlockQ6_K));
  for (DType t : kBlockTypes) {
    EXPECT_TRUE(can_dequantize(t)) << dtype_name(t);
    EXPECT_TRUE(can_quantize(t)) << dtype_name(t);
  }
}

// Q4_0, bytes written out by hand: d = -0.5 (fp16 0xB800); byte 0 = 0x0F holds element 0 (low
// nibble 15 -> (15 - 8) * -0.5 = -3.5) and element 16 (high nibble 0 -> -8 * -0.5 = 4);
// byte 1 = 0x80: element 1 -> 4, element 17 -> 0.
TEST(QuantBlocks, Q4_0ByHand) {
  std::vector<uint8_t> b(18, 0x88);  // every other element: code 8 -> 0
  b[0] = 0x00, b[1] = 0xB8, b[2] = 0x0F, b[3] = 0x80;
  const auto y = deq(DType::Q4_0, b, 32);
  EXPECT_EQ(y[0], -3.5f);
  EXPECT_EQ(y[16], 4.0f);
  EXPECT_EQ(y[1], 4.0f);
  EXPECT_EQ(y[17], 0.0f);
  EXPECT_EQ(y[31], 0.0f);
}

// Q4_K, by hand, exercising both halves of the 6-bit scale packing: d = 1 (0x3C00),
// dmin = 0.5 (0x3800). Sub-block 0: scale 2 (byte 0 low 6 bits), min 3 (byte 4).
// Sub-block 4: scale 21 = 0b01'0101: low nibble 5 in byte 8, top bits 01 in bits 6-7 of byte 0;
// min 42 = 0b10'1010: low nibble 0xA in the high nibble of byte 8, top bits 10 in byte 4.
// Element 0 = low nibble of qs[0] = 7: 1*2*7 - 0.5*3 = 12.5. Element 128 (sub-block 4) = low
// nibble of qs[64] = 15: 21*15 - 0.5*42 = 294. Element 32 (sub-block 1, scale and min 0) = 0.
TEST(QuantBlocks, Q4_KByHand) {
  std::vector<uint8_t> b(144, 0);
  b[0] = 0x00, b[1] = 0x3C, b[2] = 0x00, b[3] = 0x38;
  uint8_t* s = b.data() + 4;
  s[0] = 2 | 0x40;
  s[4] = 3 | 0x80;
  s[8] = 0xA5;
  uint8_t* qs = b.data() + 16;
  qs[0] = 0x07;
  qs[64] = 0x0F;
  const auto y = deq(DType::Q4_K, b, 256);
  EXPECT_EQ(y[0], 12.5f);
  EXPECT_EQ(y[128], 294.0f);
  EXPECT_EQ(y[32], 0.0f);
  EXPECT_EQ(y[1], -1.5f);     // code 0 in sub-block 0: -dmin * 3
  EXPECT_EQ(y[129], -21.0f);  // code 0 in sub-block 4: -dmin * 42
}

// Q6_K, by hand: d = 0.25 (0x3400), scale 0 = -3, scale 4 = 5. Element 0: ql[0] low nibble 0,
// qh[0] bits 0-1 = 0 -> code 0 - 32 = -32 -> 0.25 * -3 * -32 = 24. Element 64 (sub-block 4):
// ql[0] high nibble 0xF, qh[0] bits 4-5 = 3 -> 63 - 32 = 31 -> 0.25 * 5 * 31 = 38.75.
TEST(QuantBlocks, Q6_KByHand) {
  std::vector<uint8_t> b(210, 0);
  b[208] = 0x00, b[209] = 0x34;
  b[192 + 0] = uint8_t(int8_t(-3));
  b[192 + 4] = 5;
  b[0] = 0xF0;
  b[128] = 0x30;
  const auto y = deq(DType::Q6_K, b, 256);
  EXPECT_EQ(y[0], 24.0f);
  EXPECT_EQ(y[64], 38.75f);
  EXPECT_EQ(y[1], 24.0f);  // all-zero bits: code -32 with scale -3
}

// Every format, two consecutive blocks of varied content (negative scales where the format
// allows them, all codes, extreme scales and mins): each element equals the formula.
TEST(QuantBlocks, EveryFormatMatchesItsFormula) {
  for (DType t : kBlockTypes) {
    const bool kq = qspec::sub_size(t) != 0;
    // K-quant scales multiply a 6/8-bit sub-scale: keep d small so values stay moderate.
    const qspec::Block a = make_block(t, 1, kq ? -0.0123f : -0.0123f * 4, 0.00731f);
    const qspec::Block b = make_block(t, 2, kq ? 0.5f : 3.25f, t == DType::Q4_1 || t == DType::Q5_1 ? -1.75f : 0.2f);
    std::vector<uint8_t> bytes = qspec::encode(a);
    const std::vector<uint8_t> bb = qspec::encode(b);
    ASSERT_EQ(bytes.size(), traits(t).block_bytes);
    EXPECT_EQ(qspec::decode(t, bytes.data()), a) << dtype_name(t);  // the test's own spec is consistent
    bytes.insert(bytes.end(), bb.begin(), bb.end());
    const int n = qspec::block_size(t);
    const auto y = deq(t, bytes, 2 * n);
    int bad = 0;
    for (int i = 0; i < 2 * n; ++i) {
      const float want = i < n ? qspec::value(a, i) : qspec::value(b, i - n);
      if (y[size_t(i)] != want && bad++ == 0)
        ADD_FAILURE() << dtype_name(t) << " element " << i << ": " << y[size_t(i)] << ", formula " << want;
    }
    EXPECT_EQ(bad, 0) << dtype_name(t);
  }
}

// IQ4_NL: the table itself, element by element (d = 1).
TEST(QuantBlocks, IQ4_NLTable) {
  std::vector<uint8_t> b(18);
  b[0] = 0x00, b[1] = 0x3C;
  for (int j = 0; j < 16; ++j) b[size_t(2 + j)] = uint8_t(j | (15 - j) << 4);
  const auto y = deq(DType::IQ4_NL, b, 32);
  const int expect[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[size_t(j)], float(expect[j]));
    EXPECT_EQ(y[size_t(16 + j)], float(expect[15 - j]));
  }
}

TEST(QuantErrors, UnsupportedTypesThrow) {
  std::vector<uint8_t> buf(4096);
  std::vector<float> out(256);
  for (DType t : {DType::IQ2_XXS, DType::IQ3_S, DType::IQ4_XS, DType::Q8_K, DType::TQ1_0, DType::I32, DType::LUT4}) {
    EXPECT_FALSE(can_dequantize(t)) << dtype_name(t);
    EXPECT_FALSE(can_quantize(t)) << dtype_name(t);
    try {
      dequantize_row(t, buf.data(), out.data(), 256);
      ADD_FAILURE() << "expected an error for " << dtype_name(t);
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("unsupported tensor type " + dtype_name(t)), std::string::npos) << e.what();
    }
    EXPECT_THROW(vec_dot_row(t, buf.data(), out.data(), 256), Error) << dtype_name(t);
    EXPECT_THROW(quantize_row(t, out.data(), buf.data(), 256), Error) << dtype_name(t);
    EXPECT_THROW(quantize_rows(t, out.data(), buf.data(), 1, 256), Error) << dtype_name(t);
  }
  EXPECT_THROW(dequantize_row(DType(77), buf.data(), out.data(), 32), Error);  // unknown id
  EXPECT_THROW(quantize_row(DType(77), out.data(), buf.data(), 32), Error);
}

TEST(QuantErrors, BadLengthsThrow) {
  std::vector<uint8_t> buf(4096);
  std::vector<float> out(512);
  for (DType t : kBlockTypes) {
    const int64_t blk = traits(t).block;
    for (int64_t n : {blk + 1, blk / 2, int64_t(-blk)}) {
      try {
        dequantize_row(t, buf.data(), out.data(), n);
        ADD_FAILURE() << "expected an error for " << dtype_name(t) << " n=" << n;
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("block size"), std::string::npos) << e.what();
      }
      EXPECT_THROW(quantize_row(t, out.data(), buf.data(), n), Error) << dtype_name(t) << " n=" << n;
      EXPECT_THROW(quantize_rows(t, out.data(), buf.data(), 1, n), Error) << dtype_name(t) << " n=" << n;
      EXPECT_THROW(vec_dot_row(t, buf.data(), out.data(), n), Error) << dtype_name(t) << " n=" << n;
    }
  }
  EXPECT_THROW(quantize_rows(DType::Q8_0, out.data(), buf.data(), -1, 32), Error);
}

TEST(QuantErrors, TensorHelpersValidateShapes) {
  std::vector<uint8_t> buf(4 * 34);
  std::vector<float> out(128);
  TensorRef t;
  t.name = "blk.0.attn_q.weight";
  t.type = DType::Q8_0;
  t.ne = {32, 4};
  t.data = buf.data();
  t.nbytes = buf.size() - 1;  // truncated
  try {
    dequantize_tensor(t, out.data());
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("blk.0.attn_q.weight"), std::string::npos) << e.what();
  }
  t.nbytes = buf.size();
  EXPECT_NO_THROW(dequantize_tensor(t, out.data()));
  EXPECT_THROW(dequantize_tensor_row(t, 4, out.data()), Error);
  EXPECT_THROW(dequantize_tensor_row(t, -1, out.data()), Error);
  t.ne = {30, 4};  // rows not a whole number of blocks
  EXPECT_THROW(dequantize_tensor(t, out.data()), Error);
}
