// Per-format row kernels behind dequantize_row / quantize_row (quant/dequant.h dispatches on the
// type and validates lengths; these assume n is a multiple of the block size).
// Each mirrors ggml's dequantize_row_* / quantize_row_*_ref, including its order of fp32
// operations, so that results are bit-identical (see the notes at each definition).
#pragma once
#include <cstdint>

namespace primal::quant {

// dequant_legacy.cpp
void dequant_q4_0(const void* src, float* dst, int64_t n);
void dequant_q4_1(const void* src, float* dst, int64_t n);
void dequant_q5_0(const void* src, float* dst, int64_t n);
void dequant_q5_1(const void* src, float* dst, int64_t n);
void dequant_q8_0(const void* src, float* dst, int64_t n);
void dequant_iq4_nl(const void* src, float* dst, int64_t n);

// dequant_kquants.cpp
void dequant_q2_k(const void* src, float* dst, int64_t n);
void dequant_q3_k(const void* src, float* dst, int64_t n);
void dequant_q4_k(const void* src, float* dst, int64_t n);
void dequant_q5_k(const void* src, float* dst, int64_t n);
void dequant_q6_k(const void* src, float* dst, int64_t n);

// quantize_legacy.cpp
void quant_q4_0(const float* src, void* dst, int64_t n);
void quant_q4_1(const float* src, void* dst, int64_t n);
void quant_q5_0(const float* src, void* dst, int64_t n);
void quant_q5_1(const float* src, void* dst, int64_t n);
void quant_q8_0(const float* src, void* dst, int64_t n);

// quantize_iq4nl.cpp
void quant_iq4_nl(const float* src, void* dst, int64_t n);

// quantize_kquants.cpp
void quant_q2_k(const float* src, void* dst, int64_t n);
void quant_q3_k(const float* src, void* dst, int64_t n);
void quant_q4_k(const float* src, void* dst, int64_t n);
void quant_q5_k(const float* src, void* dst, int64_t n);
void quant_q6_k(const float* src, void* dst, int64_t n);

}  // namespace primal::quant
