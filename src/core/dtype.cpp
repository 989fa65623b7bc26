#include "core/dtype.h"

#include <algorithm>
#include <cctype>

#include "core/error.h"

namespace primal {
namespace {

struct Entry {
  uint32_t id;
  DTypeTraits t;
};

// Block sizes and bytes as ggml defines them (ggml-common.h); checked against real files in tests.
constexpr Entry kTypes[] = {
    {0, {"F32", 1, 4}},         {1, {"F16", 1, 2}},         {2, {"Q4_0", 32, 18}},
    {3, {"Q4_1", 32, 20}},      {6, {"Q5_0", 32, 22}},      {7, {"Q5_1", 32, 24}},
    {8, {"Q8_0", 32, 34}},      {9, {"Q8_1", 32, 36}},      {10, {"Q2_K", 256, 84}},
    {11, {"Q3_K", 256, 110}},   {12, {"Q4_K", 256, 144}},   {13, {"Q5_K", 256, 176}},
    {14, {"Q6_K", 256, 210}},   {15, {"Q8_K", 256, 292}},   {16, {"IQ2_XXS", 256, 66}},
    {17, {"IQ2_XS", 256, 74}},  {18, {"IQ3_XXS", 256, 98}}, {19, {"IQ1_S", 256, 50}},
    {20, {"IQ4_NL", 32, 18}},   {21, {"IQ3_S", 256, 110}},  {22, {"IQ2_S", 256, 82}},
    {23, {"IQ4_XS", 256, 136}}, {24, {"I8", 1, 1}},         {25, {"I16", 1, 2}},
    {26, {"I32", 1, 4}},        {27, {"I64", 1, 8}},        {28, {"F64", 1, 8}},
    {29, {"IQ1_M", 256, 56}},   {30, {"BF16", 1, 2}},       {34, {"TQ1_0", 256, 54}},
    {35, {"TQ2_0", 256, 66}},   {39, {"MXFP4", 32, 17}},
    // primal's LUT index types (quant/lut_format.h): LUT2 4 indices a byte, LUT3 8 in 3 bytes,
    // LUT4 2 a byte, LUT5 8 in 5 bytes, LUT6 4 in 3 bytes, LUT8 1 byte, LUT16 2 bytes (base byte,
    // fine byte).
    {1003, {"LUT2", 4, 1}},     {1004, {"LUT3", 8, 3}},     {1000, {"LUT4", 2, 1}},
    {1005, {"LUT5", 8, 5}},     {1006, {"LUT6", 4, 3}},     {1001, {"LUT8", 1, 1}},
    {1002, {"LUT16", 1, 2}},
};

}  // namespace

std::optional<DTypeTraits> dtype_traits(uint32_t id) {
  for (const auto& e : kTypes)
    if (e.id == id) return e.t;
  return std::nullopt;
}

const DTypeTraits& traits(DType t) {
  for (const auto& e : kTypes)
    if (e.id == uint32_t(t)) return e.t;
  fail("unknown tensor type id {}", uint32_t(t));
}

std::string dtype_name(DType t) {
  auto tr = dtype_traits(uint32_t(t));
  return tr ? std::string(tr->name) : "type#" + std::to_string(uint32_t(t));
}

std::optional<DType> dtype_from_name(std::string_view name) {
  std::string up(name);
  std::transform(up.begin(), up.end(), up.begin(), [](unsigned char c) { return std::toupper(c); });
  for (const auto& e : kTypes)
    if (up == e.t.name) return DType(e.id);
  return std::nullopt;
}

size_t row_bytes(DType t, int64_t n) {
  const DTypeTraits& tr = traits(t);
  PRIMAL_CHECK(tr.block_bytes > 0, "row_bytes: {} has no fixed block layout", tr.name);
  PRIMAL_CHECK(n >= 0 && n % tr.block == 0, "row of {} elements is not a multiple of the {} block size {}", n,
               tr.name, tr.block);
  return size_t(n / tr.block) * tr.block_bytes;
}

}  // namespace primal
