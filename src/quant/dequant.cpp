// Dispatch of the CPU block formats (the kernels live in dequant_*.cpp and quantize_*.cpp), the
// float formats, the parallel tensor helpers and vec_dot_row.
#include "quant/fp_exact.h"  // first: no fused multiply-adds (bit-exactness)
#include "quant/dequant.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/half.h"
#include "quant/formats.h"
#include "quant/lut_pack.h"

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

void q_f32(const float* src, void* dst, int64_t n) { std::memcpy(dst, src, sizeof(float) * size_t(n)); }
void q_f16(const float* src, void* dst, int64_t n) {
  uint16_t* d = static_cast<uint16_t*>(dst);
  for (int64_t i = 0; i < n; ++i) d[i] = f32_to_f16(src[i]);
}
void q_bf16(const float* src, void* dst, int64_t n) {
  uint16_t* d = static_cast<uint16_t*>(dst);
  for (int64_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
}

using DeqFn = void (*)(const void*, float*, int64_t);
using QFn = void (*)(const float*, void*, int64_t);

DeqFn deq_fn(DType t) {
  switch (t) {
    case DType::F32: return deq_f32;
    case DType::F16: return deq_f16;
    case DType::BF16: return deq_bf16;
    case DType::Q4_0: return quant::dequant_q4_0;
    case DType::Q4_1: return quant::dequant_q4_1;
    case DType::Q5_0: return quant::dequant_q5_0;
    case DType::Q5_1: return quant::dequant_q5_1;
    case DType::Q8_0: return quant::dequant_q8_0;
    case DType::IQ4_NL: return quant::dequant_iq4_nl;
    case DType::Q2_K: return quant::dequant_q2_k;
    case DType::Q3_K: return quant::dequant_q3_k;
    case DType::Q4_K: return quant::dequant_q4_k;
    case DType::Q5_K: return quant::dequant_q5_k;
    case DType::Q6_K: return quant::dequant_q6_k;
    default: return nullptr;
  }
}

QFn q_fn(DType t) {
  switch (t) {
    case DType::F32: return q_f32;
    case DType::F16: return q_f16;
    case DType::BF16: return q_bf16;
    case DType::Q4_0: return quant::quant_q4_0;
    case DType::Q4_1: return quant::quant_q4_1;
    case DType::Q5_0: return quant::quant_q5_0;
    case DType::Q5_1: return quant::quant_q5_1;
    case DType::Q8_0: return quant::quant_q8_0;
    case DType::IQ4_NL: return quant::quant_iq4_nl;
    case DType::Q2_K: return quant::quant_q2_k;
    case DType::Q3_K: return quant::quant_q3_k;
    case DType::Q4_K: return quant::quant_q4_k;
    case DType::Q5_K: return quant::quant_q5_k;
    case DType::Q6_K: return quant::quant_q6_k;
    default: return nullptr;
  }
}

DeqFn checked_deq_fn(DType t) {
  DeqFn f = deq_fn(t);
  if (!f && is_lut(t)) fail("unsupported tensor type {} without its scales and grid (a LUT tensor of a model)", dtype_name(t));
  if (!f) fail("unsupported tensor type {} (no CPU dequantizer)", dtype_name(t));
  return f;
}

void check_len(DType t, int64_t n) {
  const auto& tr = traits(t);
  PRIMAL_CHECK(n >= 0 && n % tr.block == 0, "row of {} elements is not a multiple of the {} block size {}", n,
               tr.name, tr.block);
}

}  // namespace

bool can_dequantize(DType t) { return deq_fn(t) != nullptr; }
bool can_quantize(DType t) { return q_fn(t) != nullptr; }
bool can_dequantize(const TensorRef& t) { return is_lut(t.type) ? t.lut.grid != nullptr : can_dequantize(t.type); }

namespace {
void dequantize_lut_tensor_row(const TensorRef& t, int64_t r, float* dst) {
  PRIMAL_CHECK(t.lut.grid && t.lut.scale, "tensor '{}': {} without its scales and grid", t.name, dtype_name(t.type));
  const int64_t ne0 = t.row_size();
  dequantize_lut_row(t.type, t.row(r), t.lut.scale + r * (ne0 / t.lut.group), t.lut.group, t.lut.grid, dst, ne0);
}
}  // namespace

void dequantize_row(DType t, const void* src, float* dst, int64_t n) {
  DeqFn f = checked_deq_fn(t);
  check_len(t, n);
  f(src, dst, n);
}

void dequantize_tensor_row(const TensorRef& t, int64_t r, float* dst) {
  PRIMAL_CHECK(r >= 0 && r < t.nrows(), "tensor '{}': row {} out of range ({} rows)", t.name, r, t.nrows());
  if (is_lut(t.type)) return dequantize_lut_tensor_row(t, r, dst);
  dequantize_row(t.type, t.row(r), dst, t.row_size());
}

void dequantize_tensor(const TensorRef& t, float* dst) {
  const int64_t ne0 = t.row_size(), nrows = t.nrows();
  if (is_lut(t.type)) {
    PRIMAL_CHECK(t.nbytes == row_bytes(t.type, ne0) * size_t(nrows), "tensor '{}': {} bytes for {} rows of {} {}",
                 t.name, t.nbytes, nrows, ne0, dtype_name(t.type));
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < nrows; ++r) dequantize_lut_tensor_row(t, r, dst + r * ne0);
    return;
  }
  DeqFn f = checked_deq_fn(t.type);
  const size_t rb = row_bytes(t.type, ne0);  // validates ne0 against the block size
  PRIMAL_CHECK(t.nbytes == rb * size_t(nrows), "tensor '{}': {} bytes, expected {} for {} rows of {} {}", t.name,
               t.nbytes, rb * size_t(nrows), nrows, ne0, dtype_name(t.type));
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < nrows; ++r) f(t.data + size_t(r) * rb, dst + r * ne0, ne0);
}

void quantize_row(DType t, const float* src, void* dst, int64_t n) {
  QFn f = q_fn(t);
  if (!f) fail("cannot quantize to {}", dtype_name(t));
  check_len(t, n);
  f(src, dst, n);
}

size_t quantize_rows(DType t, const float* src, void* dst, int64_t nrows, int64_t n_per_row) {
  QFn f = q_fn(t);
  if (!f) fail("cannot quantize to {}", dtype_name(t));
  PRIMAL_CHECK(nrows >= 0, "quantize_rows: negative row count {}", nrows);
  const size_t rb = row_bytes(t, n_per_row);  // validates n_per_row against the block size
  uint8_t* out = static_cast<uint8_t*>(dst);
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t r = 0; r < nrows; ++r) f(src + r * n_per_row, out + size_t(r) * rb, n_per_row);
  return rb * size_t(nrows);
}

float vec_dot_row(DType t, const void* row, const float* x, int64_t n) {
  DeqFn f = checked_deq_fn(t);
  check_len(t, n);
  const auto& tr = traits(t);
  // Decode kChunk elements (whole blocks: 256 is a multiple of every block size here) at a time,
  // then sum products in fp32 over each block (32 elements for the per-element float types).
  constexpr int64_t kChunk = 256;
  const int64_t group = std::max<int64_t>(tr.block, 32);
  const uint8_t* src = static_cast<const uint8_t*>(row);
  float buf[kChunk];
  double total = 0;
  for (int64_t i0 = 0; i0 < n; i0 += kChunk) {
    const int64_t m = std::min(kChunk, n - i0);
    f(src + size_t(i0 / tr.block) * tr.block_bytes, buf, m);
    for (int64_t g0 = 0; g0 < m; g0 += group) {
      const int64_t g1 = std::min(m, g0 + group);
      // 8 interleaved fp32 partial sums (independent chains the compiler can vectorize); the
      // error bound of an fp32 sum of the block does not depend on the order.
      float lane[8] = {};
      int64_t i = g0;
      for (; i + 8 <= g1; i += 8)
        for (int l = 0; l < 8; ++l) lane[l] += buf[i + l] * x[i0 + i + l];
      for (; i < g1; ++i) lane[0] += buf[i] * x[i0 + i];
      total += double(((lane[0] + lane[4]) + (lane[1] + lane[5])) + ((lane[2] + lane[6]) + (lane[3] + lane[7])));
    }
  }
  return float(total);
}

}  // namespace primal
