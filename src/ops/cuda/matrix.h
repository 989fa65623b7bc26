// Weight matrices in device memory, in the layout the GEMV and dequantization kernels read.
//
// The float types are uploaded as stored. Every block format is split "structure of arrays" so
// that a lane of a warp reads the quants of one 32-element unit with a single aligned 16-byte
// load (ggml's blocks are 18, 34, 144, 210 bytes: unaligned for that), its scales with one more:
//   Q4_0, IQ4_NL q: (O, I/2) bytes, per unit 16 bytes: byte j = element j (low nibble) and
//                  element j + 16 (high nibble), ggml's order; s: (O, I/32) fp16 d
//   Q4_1         q as Q4_0; s: (O, I/32) fp16 pairs (d, m)
//   Q5_0         q as Q4_0 (low 4 bits); qh: (O, I/32) u32, bit j = bit 4 of element j; s: fp16 d
//   Q5_1         q, qh as Q5_0; s: fp16 pairs (d, m)
//   Q8_0         q: (O, I) int8; s: (O, I/32) fp16 d
//   Q4_K         q as Q4_0 per unit (= sub-block); sc: (O, I/16) bytes, per unit (scale, min) of
//                6 bits; s: (O, I/256) fp16 pairs (d, dmin)
//   Q5_K         as Q4_K, plus qh as Q5_0
//   Q6_K         q as Q4_0 (low 4 bits); qh: (O, I/16) u32, per unit two words, bits 8k+2i..+1
//                of word h = the top 2 bits of element 16h + 4i + k (so that a shift and a mask
//                line up those of 4 elements with their bytes); sc: (O, I/16) int8, per unit the
//                scales of its two 16-element sub-blocks; s: (O, I/256) fp16 d
//   Q2_K, Q3_K   q: (O, I/256) ggml super-blocks as stored (rare: decoded element by element)
//   F32/F16/BF16 q: (O, I) elements
//   LUT2..LUT16  q: (O, row_bytes) the packed indices as stored (quant/lut_pack.h); s: (O, I/32)
//                fp16, the scale of each unit (a group of G = 32, 64, 128 or I weights is G/32
//                units with equal scales: one load per unit whatever G); grid: (K) fp32, the
//                matrix's grid (its own, or a copy of the shared one). Groups that are no
//                multiple of 32 are refused.
// Every value is kept bit for bit, so dequantization on the GPU equals the CPU's exactly.
#pragma once
#include <cstdint>
#include <vector>

#include "core/dtype.h"
#include "core/tensor_ref.h"
#include "ops/cuda/buffer.h"

namespace primal::cuda {

// What kernels get (by value). Per-row strides of each part, in its own elements.
struct MatrixView {
  DType type = DType::F32;
  int64_t rows = 0, cols = 0;     // O, I
  const uint8_t* q = nullptr;     // quants: row r at q + r * q_row
  const uint16_t* s = nullptr;    // fp16 scales: row r at s + r * s_row
  const uint32_t* qh = nullptr;   // high bits: row r at qh + r * qh_row
  const uint8_t* sc = nullptr;    // small per-unit scales: row r at sc + r * sc_row
  const float* grid = nullptr;    // LUT types: (K) grid values, shared by all rows
  int64_t q_row = 0, s_row = 0, qh_row = 0, sc_row = 0;
};

// A matrix that owns its device memory.
struct DeviceMatrix {
  DeviceBuffer buf;
  MatrixView view;
  size_t bytes() const { return buf.size(); }
};

// Whether the GPU kernels read this type.
bool gpu_supports(DType t);

// The host image of a matrix in the GPU layout: the parts q, s, qh, sc one after the other, each
// 256-byte aligned, at the offsets given; per-row strides as in MatrixView.
struct PackedMatrix {
  std::vector<uint8_t> bytes;
  size_t s_off = 0, qh_off = 0, sc_off = 0, grid_off = 0;  // q is at 0; 0 for an absent part
  bool has_s = false, has_qh = false, has_sc = false, has_grid = false;
  int64_t q_row = 0, s_row = 0, qh_row = 0, sc_row = 0;
};
// Throws naming the tensor for an unsupported type or inconsistent sizes.
PackedMatrix pack_matrix(const TensorRef& t);

// Packs (unless the stored layout is already the GPU's) and uploads.
DeviceMatrix upload_matrix(const TensorRef& t);

// Several matrices of one type and width stacked into one (their rows one after the other), so
// that one GEMM or GEMV reads them all (Q, K, V; gate and up). Throws when they differ. LUT
// matrices stack when they share the group and the grid values.
DeviceMatrix upload_stacked(const std::vector<const TensorRef*>& parts);
bool can_stack(const std::vector<const TensorRef*>& parts);

// Rows r0 .. r0+n-1 of a matrix, as a view into the same memory.
MatrixView row_slice(const MatrixView& m, int64_t r0, int64_t n);

}  // namespace primal::cuda
