#include "quant/dequant.h"

#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/half.h"
#include "quant/blocks.h"

namespace primal {
namespace {

void deq_f32(const void* src, float* dst, int64_t n) { std::memcpy(dst, src, sizeof(float) * size_t(n)); }
void deq_f16(const void* src, float* dst, int64_t n) {
  const uint16_t* s = static_cast<const uint16_t*>(src);
  for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(s[i]);
}
void deq_bf16(const void* src, float* dst, int64_t n) {
  const uint16_t* s = static_cast<const uint16_t*>(src);
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
}
// Q8_0: x = d * q, d fp16, 32 int8 per block.
void deq_q8_0(const void* src, float* dst, int64_t n) {
  const BlockQ8_0* b = static_cast<const BlockQ8_0*>(src);
  for (int64_t k = 0; k < n / QK8_0; ++k) {
    const float d = f16_to_f32(b[k].d);
    for (int j = 0; j < QK8_0; ++j) dst[k * QK8_0 + j] = d * float(b[k].qs[j]);
  }
}

void q_f32(const float* src, void* dst, int64_t n) { std::memcpy(dst, src, sizeof(float) * size_t(n)); }
void q_f16(const float* src, void* dst, int64_t n) {
  uint16_t* d = static_cast<uint16_t*>(dst);
  for (int64_t i = 0; i < n; ++i) d[i] = f32_to_f16(src[i]);
}
void q_bf16(const float* src, void* dst, int64_t n) {
  uint16_t* d = static_cast<uint16_t*>(dst);
  for (int64_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
}
// Q8_0 as ggml's reference quantizer: d = amax / 127, q = round(x / d).
void q_q8_0(const float* src, void* dst, int64_t n) {
  BlockQ8_0* b = static_cast<BlockQ8_0*>(dst);
  for (int64_t k = 0; k < n / QK8_0; ++k) {
    const float* x = src + k * QK8_0;
    float amax = 0;
    for (int j = 0; j < QK8_0; ++j) amax = std::fmax(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = d ? 1.0f / d : 0.0f;
    b[k].d = f32_to_f16(d);
    for (int j = 0; j < QK8_0; ++j) b[k].qs[j] = int8_t(std::lround(x[j] * id));
  }
}

using DeqFn = void (*)(const void*, float*, int64_t);
using QFn = void (*)(const float*, void*, int64_t);

DeqFn deq_fn(DType t) {
  switch (t) {
    case DType::F32: return deq_f32;
    case DType::F16: return deq_f16;
    case DType::BF16: return deq_bf16;
    case DType::Q8_0: return deq_q8_0;
    default: return nullptr;
  }
}

QFn q_fn(DType t) {
  switch (t) {
    case DType::F32: return q_f32;
    case DType::F16: return q_f16;
    case DType::BF16: return q_bf16;
    case DType::Q8_0: return q_q8_0;
    default: return nullptr;
  }
}

void check_len(DType t, int64_t n) {
  const auto& tr = traits(t);
  PRIMAL_CHECK(n >= 0 && n % tr.block == 0, "row of {} elements is not a multiple of the {} block size {}", n,
               tr.name, tr.block);
}

}  // namespace

bool can_dequantize(DType t) { return deq_fn(t) != nullptr; }
bool can_quantize(DType t) { return q_fn(t) != nullptr; }

void dequantize_row(DType t, const void* src, float* dst, int64_t n) {
  DeqFn f = deq_fn(t);
  if (!f) fail("unsupported tensor type {} (no CPU dequantizer)", dtype_name(t));
  check_len(t, n);
  f(src, dst, n);
}

void dequantize_tensor_row(const TensorRef& t, int64_t r, float* dst) {
  PRIMAL_CHECK(r >= 0 && r < t.nrows(), "tensor '{}': row {} out of range ({} rows)", t.name, r, t.nrows());
  dequantize_row(t.type, t.row(r), dst, t.row_size());
}

void quantize_row(DType t, const float* src, void* dst, int64_t n) {
  QFn f = q_fn(t);
  if (!f) fail("cannot quantize to {}", dtype_name(t));
  check_len(t, n);
  f(src, dst, n);
}

}  // namespace primal
