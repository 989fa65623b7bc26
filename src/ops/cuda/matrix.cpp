#include "ops/cuda/matrix.h"

#include <cstring>

#include "core/error.h"
#include "quant/blocks.h"
#include "quant/lut_pack.h"

namespace primal::cuda {
namespace {

size_t align256(size_t n) { return (n + 255) / 256 * 256; }

// Per-row sizes of the parts of a split format, in their elements (bytes, fp16, u32, bytes).
struct Parts {
  int64_t q = 0, s = 0, qh = 0, sc = 0;
};

bool stored_as_is(DType t) {
  return t == DType::F32 || t == DType::F16 || t == DType::BF16 || t == DType::Q2_K || t == DType::Q3_K;
}

Parts parts_of(DType t, int64_t I) {
  const int64_t units = I / 32, supers = I / 256;
  switch (t) {
    case DType::Q4_0: case DType::IQ4_NL: return {16 * units, units, 0, 0};
    case DType::Q4_1: return {16 * units, 2 * units, 0, 0};
    case DType::Q5_0: return {16 * units, units, units, 0};
    case DType::Q5_1: return {16 * units, 2 * units, units, 0};
    case DType::Q8_0: return {32 * units, units, 0, 0};
    case DType::Q4_K: return {16 * units, 2 * supers, 0, 2 * units};
    case DType::Q5_K: return {16 * units, 2 * supers, units, 2 * units};
    case DType::Q6_K: return {16 * units, supers, 2 * units, 2 * units};
    case DType::LUT2: case DType::LUT3: case DType::LUT4: case DType::LUT5: case DType::LUT6:
    case DType::LUT8: case DType::LUT16:
      return {int64_t(row_bytes(t, I)), units, 0, 0};
    default: return {int64_t(row_bytes(t, I)), 0, 0, 0};
  }
}

uint16_t rd16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
uint32_t rd32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// 32 codes (0..15, the low 4 bits) into the 16 quant bytes of a unit: byte j = code j | code j+16 << 4.
void put_nibbles(const int* code, uint8_t* q) {
  for (int j = 0; j < 16; ++j) q[j] = uint8_t((code[j] & 0xF) | (code[j + 16] & 0xF) << 4);
}

// One row of ggml blocks into the parts of the GPU layout.
void pack_row(DType t, const uint8_t* src, int64_t I, uint8_t* q, uint16_t* s, uint32_t* qh, uint8_t* sc) {
  const int64_t units = I / 32;
  if (t == DType::Q4_0 || t == DType::IQ4_NL || t == DType::Q4_1 || t == DType::Q5_0 || t == DType::Q5_1 ||
      t == DType::Q8_0) {
    const size_t bb = traits(t).block_bytes;
    for (int64_t u = 0; u < units; ++u) {
      const uint8_t* b = src + size_t(u) * bb;
      switch (t) {
        case DType::Q4_0: case DType::IQ4_NL: s[u] = rd16(b); std::memcpy(q + 16 * u, b + 2, 16); break;
        case DType::Q4_1: s[2 * u] = rd16(b), s[2 * u + 1] = rd16(b + 2); std::memcpy(q + 16 * u, b + 4, 16); break;
        case DType::Q5_0: s[u] = rd16(b), qh[u] = rd32(b + 2); std::memcpy(q + 16 * u, b + 6, 16); break;
        case DType::Q5_1:
          s[2 * u] = rd16(b), s[2 * u + 1] = rd16(b + 2), qh[u] = rd32(b + 4);
          std::memcpy(q + 16 * u, b + 8, 16);
          break;
        default: s[u] = rd16(b); std::memcpy(q + 32 * u, b + 2, 32); break;  // Q8_0
      }
    }
    return;
  }
  // K-quants, super-block by super-block; element order as in quant/dequant_kquants.cpp.
  for (int64_t k = 0; k < I / 256; ++k) {
    if (t == DType::Q4_K || t == DType::Q5_K) {
      const uint8_t* b = src + size_t(k) * (t == DType::Q4_K ? 144 : 176);
      s[2 * k] = rd16(b), s[2 * k + 1] = rd16(b + 2);
      const uint8_t* scales = b + 4;
      const uint8_t* qhs = b + 16;                            // Q5_K only
      const uint8_t* qs = b + (t == DType::Q4_K ? 16 : 48);
      for (int g = 0; g < 8; ++g) {  // unit g = sub-block g: elements 64c + 32s + r, g = 2c + s
        const int64_t u = 8 * k + g;
        const int c = g / 2, half = g % 2;
        uint8_t scv, mv;
        get_scale_min_k4(g, scales, &scv, &mv);
        sc[2 * u] = scv, sc[2 * u + 1] = mv;
        int code[32];
        uint32_t high = 0;
        for (int r = 0; r < 32; ++r) {
          code[r] = (qs[32 * c + r] >> (4 * half)) & 0xF;
          if (t == DType::Q5_K && (qhs[r] >> g) & 1) high |= 1u << r;
        }
        put_nibbles(code, q + 16 * u);
        if (t == DType::Q5_K) qh[u] = high;
      }
    } else {  // Q6_K: ql (128) qh (64) scales (16) d
      const uint8_t* b = src + size_t(k) * 210;
      s[k] = rd16(b + 208);
      for (int g8 = 0; g8 < 8; ++g8) {  // unit (h, g): elements 128h + 32g + r
        const int64_t u = 8 * k + g8;
        const int h = g8 / 4, g = g8 % 4;
        int code[32];
        uint32_t words[2] = {0, 0};
        for (int r = 0; r < 32; ++r) {
          code[r] = (b[64 * h + 32 * (g % 2) + r] >> (4 * (g / 2))) & 0xF;
          const uint32_t top = (b[128 + 32 * h + r] >> (2 * g)) & 3;
          const int e = r % 16;  // element 4 i + k of half r / 16: bits 8 k + 2 i
          words[r / 16] |= top << (8 * (e % 4) + 2 * (e / 4));
        }
        put_nibbles(code, q + 16 * u);
        qh[2 * u] = words[0], qh[2 * u + 1] = words[1];
        sc[2 * u] = b[192 + 8 * h + 2 * g], sc[2 * u + 1] = b[192 + 8 * h + 2 * g + 1];
      }
    }
  }
}

void check_matrix(const TensorRef& t) {
  PRIMAL_CHECK(t.ne.size() == 2, "tensor '{}' is not a matrix", t.name);
  PRIMAL_CHECK(gpu_supports(t.type), "tensor '{}': type {} has no GPU kernels", t.name, dtype_name(t.type));
  PRIMAL_CHECK(t.ne[0] % 32 == 0, "tensor '{}': rows of {} elements (the GPU needs multiples of 32)", t.name, t.ne[0]);
  PRIMAL_CHECK(t.nbytes == row_bytes(t.type, t.ne[0]) * size_t(t.ne[1]), "tensor '{}': {} bytes for {} rows of {} {}",
               t.name, t.nbytes, t.ne[1], t.ne[0], dtype_name(t.type));
  if (is_lut(t.type)) {
    const LutParams& l = t.lut;
    PRIMAL_CHECK(l.scale && l.grid, "tensor '{}': {} without its scale and grid attached", t.name, dtype_name(t.type));
    PRIMAL_CHECK(l.n_grid == lut_entries(t.type), "tensor '{}': a grid of {} values for {}", t.name, l.n_grid,
                 dtype_name(t.type));
    // The GPU kernels read one scale per 32-element unit (matrix.h).
    PRIMAL_CHECK(l.group > 0 && l.group % 32 == 0 && t.ne[0] % l.group == 0,
                 "tensor '{}': groups of {} weights (the GPU needs a multiple of 32 dividing the row of {})", t.name,
                 l.group, t.ne[0]);
  }
}

// A LUT matrix: indices as stored, the scales expanded to one per unit, the grid.
void pack_lut(const TensorRef& t, PackedMatrix& p) {
  const int64_t I = t.ne[0], O = t.ne[1], units = I / 32, per_row = I / t.lut.group;
  size_t end = align256(size_t(O * p.q_row));
  p.s_off = end, end = align256(end + size_t(O * units) * 2);
  p.has_grid = true, p.grid_off = end, end += size_t(t.lut.n_grid) * sizeof(float);
  p.bytes.assign(end, 0);
  uint8_t* base = p.bytes.data();
  std::memcpy(base, t.data, t.nbytes);  // rows of q_row = row_bytes bytes: the stored layout
  uint16_t* s = reinterpret_cast<uint16_t*>(base + p.s_off);
  for (int64_t r = 0; r < O; ++r)
    for (int64_t u = 0; u < units; ++u) s[r * units + u] = t.lut.scale[r * per_row + u * 32 / t.lut.group];
  std::memcpy(base + p.grid_off, t.lut.grid, size_t(t.lut.n_grid) * sizeof(float));
}

MatrixView view_of(DType t, int64_t O, int64_t I, const uint8_t* base, const PackedMatrix& p) {
  MatrixView v;
  v.type = t, v.rows = O, v.cols = I;
  v.q = base, v.q_row = p.q_row;
  if (p.has_s) v.s = reinterpret_cast<const uint16_t*>(base + p.s_off), v.s_row = p.s_row;
  if (p.has_qh) v.qh = reinterpret_cast<const uint32_t*>(base + p.qh_off), v.qh_row = p.qh_row;
  if (p.has_sc) v.sc = base + p.sc_off, v.sc_row = p.sc_row;
  if (p.has_grid) v.grid = reinterpret_cast<const float*>(base + p.grid_off);
  return v;
}

}  // namespace

bool gpu_supports(DType t) {
  switch (t) {
    case DType::F32: case DType::F16: case DType::BF16:
    case DType::Q4_0: case DType::Q4_1: case DType::Q5_0: case DType::Q5_1: case DType::Q8_0: case DType::IQ4_NL:
    case DType::Q2_K: case DType::Q3_K: case DType::Q4_K: case DType::Q5_K: case DType::Q6_K:
    case DType::LUT2: case DType::LUT3: case DType::LUT4: case DType::LUT5: case DType::LUT6:
    case DType::LUT8: case DType::LUT16:
      return true;
    default: return false;
  }
}

PackedMatrix pack_matrix(const TensorRef& t) {
  check_matrix(t);
  const int64_t I = t.ne[0], O = t.ne[1];
  const Parts n = parts_of(t.type, I);
  PackedMatrix p;
  p.q_row = n.q, p.s_row = n.s, p.qh_row = n.qh, p.sc_row = n.sc;
  p.has_s = n.s > 0, p.has_qh = n.qh > 0, p.has_sc = n.sc > 0;
  if (stored_as_is(t.type)) {
    p.bytes.assign(t.data, t.data + t.nbytes);
    return p;
  }
  if (is_lut(t.type)) {
    pack_lut(t, p);
    return p;
  }
  size_t end = align256(size_t(O * n.q));
  p.s_off = end, end = align256(end + size_t(O * n.s) * 2);
  p.qh_off = p.has_qh ? end : 0, end = align256(end + size_t(O * n.qh) * 4);
  p.sc_off = p.has_sc ? end : 0, end += size_t(O * n.sc);
  p.bytes.assign(end, 0);
  uint8_t* base = p.bytes.data();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < O; ++r)
    pack_row(t.type, t.row(r), I, base + r * n.q, reinterpret_cast<uint16_t*>(base + p.s_off) + r * n.s,
             reinterpret_cast<uint32_t*>(base + p.qh_off) + r * n.qh, base + p.sc_off + r * n.sc);
  return p;
}

DeviceMatrix upload_matrix(const TensorRef& t) {
  check_matrix(t);
  const int64_t I = t.ne[0], O = t.ne[1];
  DeviceMatrix m;
  if (stored_as_is(t.type)) {  // straight from the mapping, no host copy
    m.buf = DeviceBuffer(t.nbytes);
    copy_to_device(m.buf.data(), t.data, t.nbytes);
    PackedMatrix p;
    p.q_row = int64_t(row_bytes(t.type, I));
    m.view = view_of(t.type, O, I, m.buf.as<uint8_t>(), p);
    return m;
  }
  const PackedMatrix p = pack_matrix(t);
  m.buf = DeviceBuffer(p.bytes.size());
  copy_to_device(m.buf.data(), p.bytes.data(), p.bytes.size());
  m.view = view_of(t.type, O, I, m.buf.as<uint8_t>(), p);
  return m;
}

bool can_stack(const std::vector<const TensorRef*>& parts) {
  if (parts.empty()) return false;
  const TensorRef& a = *parts[0];
  for (const TensorRef* t : parts) {
    if (t->type != a.type || t->ne.size() != 2 || t->ne[0] != a.ne[0]) return false;
    if (is_lut(a.type) && (t->lut.group != a.lut.group || t->lut.n_grid != a.lut.n_grid || !t->lut.grid ||
                           !a.lut.grid ||
                           std::memcmp(t->lut.grid, a.lut.grid, size_t(a.lut.n_grid) * sizeof(float)) != 0))
      return false;
  }
  return true;
}

DeviceMatrix upload_stacked(const std::vector<const TensorRef*>& parts) {
  PRIMAL_CHECK(can_stack(parts), "upload_stacked: matrices of different types, widths or LUT groups and grids");
  if (parts.size() == 1) return upload_matrix(*parts[0]);
  // ggml matrices are row-major: their bytes one after the other are the stacked matrix.
  std::vector<uint8_t> bytes;
  std::vector<uint16_t> scales;  // LUT: the parts' scales, stacked as their rows
  int64_t rows = 0;
  std::string name;
  for (const TensorRef* t : parts) {
    check_matrix(*t);
    bytes.insert(bytes.end(), t->data, t->data + t->nbytes);
    if (is_lut(t->type)) {
      const size_t n = size_t(t->ne[1] * (t->ne[0] / t->lut.group));
      scales.insert(scales.end(), t->lut.scale, t->lut.scale + n);
    }
    rows += t->ne[1];
    name += (name.empty() ? "" : "+") + t->name;
  }
  TensorRef all{name, parts[0]->type, {parts[0]->ne[0], rows}, bytes.data(), bytes.size()};
  if (is_lut(all.type)) all.lut = parts[0]->lut, all.lut.scale = scales.data();
  return upload_matrix(all);
}

MatrixView row_slice(const MatrixView& m, int64_t r0, int64_t n) {
  PRIMAL_CHECK(r0 >= 0 && n > 0 && r0 + n <= m.rows, "row_slice: rows {}..{} of {}", r0, r0 + n, m.rows);
  MatrixView v = m;
  v.rows = n;
  v.q += r0 * m.q_row;
  if (v.s) v.s += r0 * m.s_row;
  if (v.qh) v.qh += r0 * m.qh_row;
  if (v.sc) v.sc += r0 * m.sc_row;
  return v;
}

}  // namespace primal::cuda
