// IQ4_NL quantizer: x ~ d * kvalues_iq4nl[q] per block of 32, as llama-quantize writes it without
// an importance matrix (ggml's quantize_iq4_nl -> quantize_row_iq4_nl_impl with ntry = 7 and
// weights x^2). The scale is a weighted least-squares fit, searched over 16 code assignments:
// first with the largest-magnitude element on the top level, then with it on the bottom level
// -127 scaled by (127 - t) / 127 for t = -7..7. The grid is asymmetric, so the sign of d matters.
#include "quant/fp_exact.h"  // first: no fused multiply-adds (bit-exactness)
#include <cmath>

#include "core/half.h"
#include "quant/blocks.h"
#include "quant/formats.h"
#include "quant/scale_search.h"

namespace primal::quant {
namespace {

// Twice the midpoints between adjacent levels: kMid2[i] = kvalues[i] + kvalues[i+1].
constexpr float kMid2[15] = {-231, -187, -148, -114, -84, -57, -32, -9, 14, 38, 63, 91, 122, 158, 202};
static_assert([] {
  for (int i = 0; i < 15; ++i)
    if (kMid2[i] != float(kvalues_iq4nl[i] + kvalues_iq4nl[i + 1])) return false;
  return true;
}());

// Index of the level nearest to v, ties to the upper level: the largest i with
// 2v >= kvalues[i-1] + kvalues[i] (exact comparison: 2v and the integer sums are exact in fp32),
// i.e. the number of midpoints at or below v. Counted without branches, which the scale search
// (16 trials per block) would otherwise mispredict constantly. NaN gives 0.
inline int best_index_iq4nl(float v) {
  const float v2 = v + v;
  int idx = 0;
  for (int i = 0; i < 15; ++i) idx += v2 >= kMid2[i];
  return idx;
}

// Weighted fit of the codes chosen with inverse scale `id`: sumqx = sum w q x, sumq2 = sum w q^2.
inline void fit(const float* x, const float* w, float id, float* sumqx, float* sumq2) {
  *sumqx = 0;
  *sumq2 = 0;
  for (int j = 0; j < QK4_NL; ++j) {
    const float q = kvalues_iq4nl[best_index_iq4nl(id * x[j])];
    *sumqx += w[j] * q * x[j];
    *sumq2 += w[j] * q * q;
  }
}

void quantize_block(const float* x, BlockIQ4_NL* y) {
  constexpr int ntry = 7;
  float w[QK4_NL];
  for (int j = 0; j < QK4_NL; ++j) w[j] = x[j] * x[j];
  float amax = 0, max = 0;
  for (int j = 0; j < QK4_NL; ++j)
    if (std::fabs(x[j]) > amax) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  float d = 0;
  if (amax >= kGroupMaxEps) {
    float sumqx, sumq2;
    fit(x, w, 1 / (-max / float(kvalues_iq4nl[0])), &sumqx, &sumq2);
    d = sumq2 > 0 ? sumqx / sumq2 : 0.f;
    float best = d * sumqx;
    for (int itry = -ntry; itry <= ntry; ++itry) {
      fit(x, w, float(itry + kvalues_iq4nl[0]) / max, &sumqx, &sumq2);
      if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
        d = sumqx / sumq2;
        best = d * sumqx;
      }
    }
  }
  y->d = f32_to_f16(d);
  // Final codes from the fp32 scale. A zero block gets d = 0 and every code at the level
  // nearest 0 (index 8), exactly as ggml writes it.
  const float id = d != 0 ? 1 / d : 0;
  for (int j = 0; j < QK4_NL / 2; ++j)
    y->qs[j] = uint8_t(best_index_iq4nl(id * x[j]) | best_index_iq4nl(id * x[j + 16]) << 4);
}

}  // namespace

void quant_iq4_nl(const float* src, void* dst, int64_t n) {
  BlockIQ4_NL* y = static_cast<BlockIQ4_NL*>(dst);
  for (int64_t i = 0; i < n / QK4_NL; ++i) quantize_block(src + QK4_NL * i, y + i);
}

}  // namespace primal::quant
