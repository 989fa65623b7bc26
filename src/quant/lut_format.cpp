#include "quant/lut_format.h"

#include <cmath>
#include <cstring>
#include <map>
#include <memory>

#include <fmt/ranges.h>

#include "core/error.h"
#include "core/half.h"
#include "quant/lut_grid.h"
#include "quant/lut_pack.h"

namespace primal {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_block_linear(const std::string& name) {
  return name.rfind("blk.", 0) == 0 && ends_with(name, ".weight");
}

}  // namespace

std::string lut_scale_name(const std::string& weight) { return weight + ".scale"; }
std::string lut_grid_name(const std::string& weight) { return weight + ".grid"; }
std::string lut_shared_grid_name(DType t) { return "lut_grid." + dtype_name(t); }

bool is_lut_companion(const std::string& name) {
  return ends_with(name, ".scale") || ends_with(name, ".grid") || name.rfind("lut_grid.", 0) == 0;
}

void attach_lut_params(std::vector<TensorRef>& tensors, const std::string& source) {
  std::map<std::string, const TensorRef*> by_name;
  for (const auto& t : tensors) by_name[t.name] = &t;
  for (auto& t : tensors) {
    if (!is_lut(t.type)) continue;
    const std::string what = source + ": LUT tensor '" + t.name + "'";
    PRIMAL_CHECK(t.ne.size() == 2, "{}: {} dimensions, LUT tensors are matrices", what, t.ne.size());
    const int64_t ne0 = t.ne[0], ne1 = t.ne[1];
    auto sit = by_name.find(lut_scale_name(t.name));
    PRIMAL_CHECK(sit != by_name.end(), "{}: its scales '{}' are missing", what, lut_scale_name(t.name));
    const TensorRef& s = *sit->second;
    PRIMAL_CHECK(s.type == DType::F16, "{}: scales are {}, expected F16", what, dtype_name(s.type));
    PRIMAL_CHECK(s.ne.size() == 2 && s.ne[1] == ne1 && s.ne[0] > 0 && ne0 % s.ne[0] == 0,
                 "{}: scales of shape [{}] do not fit a matrix [{}, {}] (need [ne0 / G, {}])", what,
                 fmt::join(s.ne, ", "), ne0, ne1, ne1);
    const int64_t group = ne0 / s.ne[0];
    check_lut_shape(t.type, ne0, group, what);
    const uint16_t* scale = reinterpret_cast<const uint16_t*>(s.data);
    for (int64_t k = 0; k < s.nelements(); ++k)
      PRIMAL_CHECK(std::isfinite(f16_to_f32(scale[k])), "{}: scale {} is not finite", what, k);

    auto git = by_name.find(lut_grid_name(t.name));
    if (git == by_name.end()) git = by_name.find(lut_shared_grid_name(t.type));
    PRIMAL_CHECK(git != by_name.end(), "{}: no grid ('{}' or '{}')", what, lut_grid_name(t.name),
                 lut_shared_grid_name(t.type));
    const TensorRef& g = *git->second;
    PRIMAL_CHECK(g.type == DType::F32 && g.ne.size() == 1, "{}: grid '{}' must be a 1-D F32 tensor", what, g.name);
    PRIMAL_CHECK(reinterpret_cast<uintptr_t>(g.data) % alignof(float) == 0 &&
                     reinterpret_cast<uintptr_t>(s.data) % alignof(uint16_t) == 0,
                 "{}: scale or grid data is misaligned", what);
    const float* grid = reinterpret_cast<const float*>(g.data);
    validate_grid(grid, g.ne[0], lut_entries(t.type), what + " (grid '" + g.name + "')");
    t.lut = LutParams{scale, group, grid, g.ne[0]};
  }
}

void add_lut_tensors(GgufWriter& w, const std::string& name, DType t, int64_t ne0, int64_t ne1, int64_t group,
                     bool own_grid, LutMaker make) {
  check_lut_shape(t, ne0, group, name);
  // The matrix lives from W's producer to the last companion's.
  auto held = std::make_shared<std::unique_ptr<LutMatrix>>();
  auto get = [held, make, name, t, ne0, ne1, group]() -> LutMatrix& {
    if (!*held) {
      *held = std::make_unique<LutMatrix>(make());
      const LutMatrix& m = **held;
      PRIMAL_CHECK(m.type == t && m.ne0 == ne0 && m.ne1 == ne1 && m.group == group,
                   "{}: internal error: the quantized matrix does not match its plan", name);
    }
    return **held;
  };
  w.add_tensor(name, t, {ne0, ne1}, [get, t, ne0, ne1](uint8_t* dst, size_t nbytes) {
    LutMatrix& m = get();
    const size_t rb = row_bytes(t, ne0);
    PRIMAL_CHECK(rb * size_t(ne1) == nbytes, "internal error: LUT size mismatch");
    for (int64_t r = 0; r < ne1; ++r) pack_lut_row(t, m.idx.data() + r * ne0, dst + size_t(r) * rb, ne0);
    std::vector<uint16_t>().swap(m.idx);  // the indices are written; keep only what follows
  });
  w.add_tensor(lut_scale_name(name), DType::F16, {ne0 / group, ne1}, [get, own_grid, held](uint8_t* dst, size_t n) {
    LutMatrix& m = get();
    PRIMAL_CHECK(m.scale.size() * 2 == n, "internal error: LUT scale size mismatch");
    std::memcpy(dst, m.scale.data(), n);
    if (!own_grid) held->reset();
  });
  if (own_grid)
    w.add_tensor(lut_grid_name(name), DType::F32, {lut_entries(t)}, [get, held](uint8_t* dst, size_t n) {
      LutMatrix& m = get();
      PRIMAL_CHECK(m.grid.size() * 4 == n, "internal error: LUT grid size mismatch");
      std::memcpy(dst, m.grid.data(), n);
      held->reset();
    });
}

std::unique_ptr<PackedLut> pack_lut_matrix(const std::string& name, const LutMatrix& m) {
  auto p = std::make_unique<PackedLut>();
  const size_t rb = row_bytes(m.type, m.ne0);
  p->bytes.resize(rb * size_t(m.ne1));
  for (int64_t r = 0; r < m.ne1; ++r) pack_lut_row(m.type, m.idx.data() + r * m.ne0, p->bytes.data() + size_t(r) * rb, m.ne0);
  p->scale = m.scale;
  p->grid = m.grid;
  p->ref.name = name;
  p->ref.type = m.type;
  p->ref.ne = {m.ne0, m.ne1};
  p->ref.data = p->bytes.data();
  p->ref.nbytes = p->bytes.size();
  p->ref.lut = LutParams{p->scale.data(), m.group, p->grid.data(), int64_t(p->grid.size())};
  return p;
}

LutSizeReport model_size_report(const GgufFile& f) {
  LutSizeReport r;
  // Parameters of each LUT type, all and linear, to share out the shared grids.
  std::map<DType, int64_t> type_params, type_linear;
  for (const auto& t : f.tensors()) {
    if (is_lut_companion(t.name)) continue;
    r.params += t.nelements();
    if (is_lut(t.type)) type_params[t.type] += t.nelements();
    if (is_block_linear(t.name) && t.ne.size() == 2) {
      r.linear_params += t.nelements();
      if (is_lut(t.type)) type_linear[t.type] += t.nelements();
    }
  }
  auto weight_of = [](const std::string& n) {  // "W.scale" -> "W"
    return n.substr(0, n.rfind('.'));
  };
  for (const auto& t : f.tensors()) {
    const double bits = 8.0 * double(t.nbytes);
    r.bits += bits;
    if (t.name.rfind("lut_grid.", 0) == 0) {
      for (const auto& [type, n] : type_params)
        if (lut_shared_grid_name(type) == t.name && n > 0)
          r.linear_bits += bits * double(type_linear[type]) / double(n);
      continue;
    }
    const std::string owner = is_lut_companion(t.name) ? weight_of(t.name) : t.name;
    const GgufTensorInfo* o = f.find_tensor(owner);
    if (is_block_linear(owner) && o && o->ne.size() == 2) r.linear_bits += bits;
  }
  return r;
}

}  // namespace primal
