#include "train/lut_weight.h"

#include <cstring>
#include <vector>

#include "core/error.h"
#include "core/half.h"
#include "core/tensor_ref.h"
#include "quant/lut_grid.h"
#include "quant/lut_kmeans.h"
#include "quant/lut_pack.h"
#include "quant/lut_quantize.h"

namespace primal::train {

int LutWeight::bits() const { return lut_bits(type); }

int64_t LutWeight::row_bytes() const { return int64_t(primal::row_bytes(type, I)); }

namespace {

// The little-endian word (at most 40 bits) holding index i of a LUT3/LUT5/LUT6 row r, and where in
// it the index sits (quant/lut_pack.h).
struct Word {
  uint8_t* p;
  int nb, shift;
  uint32_t mask;
  uint64_t load() const {
    uint64_t x = 0;
    for (int q = 0; q < nb; ++q) x |= uint64_t(p[q]) << (8 * q);
    return x;
  }
};

Word word_of(DType t, const uint8_t* r, int64_t i) {
  const int b = lut_bits(t), per = int(traits(t).block), nb = int(traits(t).block_bytes);
  return {const_cast<uint8_t*>(r) + (i / per) * nb, nb, int(i % per) * b, (1u << b) - 1};
}

}  // namespace

// Single indices in the packing of quant/lut_pack.h.
uint32_t LutWeight::get(int64_t o, int64_t i) const {
  const uint8_t* r = idx.data() + o * row_bytes();
  switch (type) {
    case DType::LUT2: return (r[i / 4] >> ((i & 3) * 2)) & 3u;
    case DType::LUT3: case DType::LUT5: case DType::LUT6: {
      const Word w = word_of(type, r, i);
      return uint32_t(w.load() >> w.shift) & w.mask;
    }
    case DType::LUT4: return (r[i / 2] >> ((i & 1) * 4)) & 15u;
    case DType::LUT8: return r[i];
    default: return uint32_t(r[2 * i]) << 8 | r[2 * i + 1];
  }
}

void LutWeight::set(int64_t o, int64_t i, uint32_t v) {
  uint8_t* r = idx.data() + o * row_bytes();
  switch (type) {
    case DType::LUT2: {
      const int sh = int(i & 3) * 2;
      r[i / 4] = uint8_t((r[i / 4] & ~(3u << sh)) | ((v & 3u) << sh));
      break;
    }
    case DType::LUT3: case DType::LUT5: case DType::LUT6: {
      const Word w = word_of(type, r, i);
      const uint64_t x = (w.load() & ~(uint64_t(w.mask) << w.shift)) | uint64_t(v & w.mask) << w.shift;
      for (int q = 0; q < w.nb; ++q) w.p[q] = uint8_t(x >> (8 * q));
      break;
    }
    case DType::LUT4: {
      const int sh = int(i & 1) * 4;
      r[i / 2] = uint8_t((r[i / 2] & ~(15u << sh)) | ((v & 15u) << sh));
      break;
    }
    case DType::LUT8: r[i] = uint8_t(v); break;
    default:
      r[2 * i] = uint8_t(v >> 8);
      r[2 * i + 1] = uint8_t(v & 255u);
  }
}

template <class F>
void LutWeight::dequantize_rows(int64_t o0, int64_t n, F* dst) const {
  for (int64_t r = 0; r < n; ++r) {
    const int64_t o = o0 + r;
    const float* s = scale.data() + o * groups();
    F* d = dst + r * I;
    if (type == DType::LUT4) {  // the common case, without a call per index
      const uint8_t* p = idx.data() + o * row_bytes();
      for (int64_t i = 0; i < I; i += 2) {
        const uint8_t b = p[i / 2];
        d[i] = F(s[i / G] * grid[b & 15u]);
        d[i + 1] = F(s[(i + 1) / G] * grid[b >> 4]);
      }
    } else if (type == DType::LUT8) {
      const uint8_t* p = idx.data() + o * row_bytes();
      for (int64_t i = 0; i < I; ++i) d[i] = F(s[i / G] * grid[p[i]]);
    } else {  // the other widths: one unpack of the row (get() per index was 3x slower than LUT4)
      thread_local std::vector<uint16_t> ix;
      ix.resize(size_t(I));
      unpack_lut_row(type, idx.data() + o * row_bytes(), ix.data(), I);
      for (int64_t i = 0; i < I; ++i) d[i] = F(s[i / G] * grid[ix[size_t(i)]]);
    }
  }
}

template void LutWeight::dequantize_rows<float>(int64_t, int64_t, float*) const;
template void LutWeight::dequantize_rows<double>(int64_t, int64_t, double*) const;

LutWeight LutWeight::make(DType type, int64_t O, int64_t I, int64_t G, std::vector<float> grid,
                          const std::string& what) {
  PRIMAL_CHECK(is_lut(type), "{}: type {} is not a LUT type (LUT2..LUT6, LUT8, LUT16)", what, dtype_name(type));
  PRIMAL_CHECK(O > 0 && I > 0, "{}: empty LUT matrix ({} x {})", what, O, I);
  check_lut_shape(type, I, G, what);
  validate_grid(grid.data(), int64_t(grid.size()), lut_entries(type), what);
  LutWeight w;
  w.type = type;
  w.O = O;
  w.I = I;
  w.G = G;
  w.grid = std::move(grid);
  w.idx.assign(size_t(O * w.row_bytes()), 0);
  w.scale.assign(size_t(O * (I / G)), 0.0f);
  return w;
}

LutWeight LutWeight::from_matrix(const LutMatrix& m, const std::string& grid_name, const std::string& what) {
  LutWeight w = make(m.type, m.ne1, m.ne0, m.group, m.grid, what);
  w.grid_name = grid_name;
  for (int64_t o = 0; o < w.O; ++o)
    pack_lut_row(w.type, m.idx.data() + o * w.I, w.idx.data() + o * w.row_bytes(), w.I);
  for (size_t k = 0; k < w.scale.size(); ++k) w.scale[k] = f16_to_f32(m.scale[k]);
  return w;
}

LutWeight LutWeight::from_tensor(const TensorRef& t, const std::string& grid_name) {
  PRIMAL_CHECK(is_lut(t.type) && t.ne.size() == 2, "tensor '{}': not a LUT matrix", t.name);
  PRIMAL_CHECK(t.lut.grid && t.lut.scale, "tensor '{}': {} without its scales and grid", t.name, dtype_name(t.type));
  const int64_t I = t.ne[0], O = t.ne[1];
  LutWeight w = make(t.type, O, I, t.lut.group, std::vector<float>(t.lut.grid, t.lut.grid + t.lut.n_grid), t.name);
  w.grid_name = grid_name;
  PRIMAL_CHECK(t.nbytes == w.idx.size(), "tensor '{}': {} bytes of indices, expected {}", t.name, t.nbytes,
               w.idx.size());
  std::memcpy(w.idx.data(), t.data, t.nbytes);
  for (size_t k = 0; k < w.scale.size(); ++k) w.scale[k] = f16_to_f32(t.lut.scale[k]);
  return w;
}

LutWeight quantize_to_lut(const float* W, int64_t O, int64_t I, DType type, int64_t G, std::vector<float> grid,
                          const std::string& what) {
  PRIMAL_CHECK(is_lut(type), "{}: type {} is not a LUT type", what, dtype_name(type));
  check_lut_shape(type, I, G, what);
  validate_grid(grid.data(), int64_t(grid.size()), lut_entries(type), what);
  const LutMatrix m = lut_quantize_matrix(W, I, O, type, G, std::move(grid), nullptr);
  return LutWeight::from_matrix(m, "", what);
}

LutWeight quantize_to_lut(const float* W, int64_t O, int64_t I, DType type, int64_t G, const std::string& grid_name,
                          const std::string& what) {
  const auto kind = grid_kind_from_name(grid_name);
  PRIMAL_CHECK(kind, "{}: unknown grid '{}' (one of {})", what, grid_name, grid_names());
  PRIMAL_CHECK(is_lut(type), "{}: type {} is not a LUT type", what, dtype_name(type));
  std::vector<float> grid = *kind == GridKind::Learned
                                ? learn_grid(W, I, O, type, G, nullptr, 10).grid
                                : make_grid(*kind, lut_entries(type));
  LutWeight w = quantize_to_lut(W, O, I, type, G, std::move(grid), what);
  w.grid_name = grid_name;
  return w;
}

}  // namespace primal::train
