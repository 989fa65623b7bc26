// ggml block layouts (ggml-common.h). Sizes are asserted against core/dtype's table.
#pragma once
#include <cstdint>

namespace primal {

constexpr int QK8_0 = 32;
struct BlockQ8_0 {
  uint16_t d;          // fp16 scale
  int8_t qs[QK8_0];    // x = d * q
};
static_assert(sizeof(BlockQ8_0) == 34);

}  // namespace primal
