#include "quant/lut_export.h"

#include <fmt/format.h>

#include <filesystem>
#include <map>
#include <memory>
#include <vector>

#include "core/error.h"
#include "io/gguf.h"
#include "io/gguf_writer.h"
#include "io/model_source.h"
#include "quant/blocks.h"
#include "quant/dequant.h"
#include "quant/lut_format.h"
#include "quant/lut_pack.h"

namespace primal {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_matrix(const TensorRef& t) {
  return t.ne.size() == 2 && ends_with(t.name, ".weight") && !is_lut_companion(t.name);
}

}  // namespace

uint32_t llama_ftype_for(DType t) {
  switch (t) {
    case DType::F16: return 1;
    case DType::Q8_0: return 7;
    case DType::IQ4_NL: return 25;
    default: fail("export: {} is not an export type (iq4_nl, q8_0, f16)", dtype_name(t));
  }
}

bool lut_exports_exactly(const TensorRef& t, DType type) {
  if (!is_lut(t.type) || !t.lut.grid || t.lut.group != 32) return false;
  if (type == DType::IQ4_NL && t.type == DType::LUT4) {
    for (int i = 0; i < 16; ++i)
      if (t.lut.grid[i] != float(kvalues_iq4nl[i])) return false;
    return true;
  }
  if (type == DType::Q8_0 && t.type == DType::LUT8) {
    for (int i = 0; i < 256; ++i)
      if (t.lut.grid[i] != float(i - 128)) return false;
    return true;
  }
  return false;
}

void export_row(const TensorRef& t, int64_t r, DType type, uint8_t* dst) {
  const int64_t n = t.row_size();
  if (lut_exports_exactly(t, type)) {
    std::vector<uint16_t> idx(static_cast<size_t>(n));
    unpack_lut_row(t.type, t.row(r), idx.data(), n);
    const uint16_t* scale = t.lut.scale + r * (n / 32);
    for (int64_t b = 0; b < n / 32; ++b) {
      const uint16_t* q = idx.data() + 32 * b;
      if (type == DType::IQ4_NL) {
        BlockIQ4_NL* y = reinterpret_cast<BlockIQ4_NL*>(dst) + b;
        y->d = scale[b];
        // IQ4_NL's nibble order: element j in the low nibble of byte j, element j + 16 in its high one.
        for (int j = 0; j < 16; ++j) y->qs[j] = uint8_t(q[j] | q[j + 16] << 4);
      } else {
        BlockQ8_0* y = reinterpret_cast<BlockQ8_0*>(dst) + b;
        y->d = scale[b];
        for (int j = 0; j < 32; ++j) y->qs[j] = int8_t(int(q[j]) - 128);
      }
    }
    return;
  }
  std::vector<float> x(static_cast<size_t>(n));
  dequantize_tensor_row(t, r, x.data());
  quantize_row(type, x.data(), dst, n);
}

ExportReport export_model(const std::string& in, const std::string& out, const ExportOptions& o) {
  auto log = [&](const std::string& s) {
    if (o.log) o.log(s);
  };
  const uint32_t ftype = llama_ftype_for(o.type);
  std::unique_ptr<ModelSource> src = ModelSource::open(in);
  PRIMAL_CHECK(src->gguf(), "export: {} is not a GGUF file", in);
  PRIMAL_CHECK(std::filesystem::absolute(out) != std::filesystem::absolute(in), "export: the output {} is the input",
               out);
  const GgufFile& gf = *src->gguf();

  GgufWriter w;
  for (const auto& [k, v] : gf.kv()) {
    if (k.rfind("primal.", 0) == 0 || k == "general.file_type" || k == "general.quantization_version") continue;
    w.add_kv(k, v);
  }
  w.add_kv("general.quantization_version", GgufValue::u32(2));
  w.add_kv("general.file_type", GgufValue::u32(ftype));

  ExportReport rep;
  for (const TensorRef& t : src->tensors()) {
    if (is_lut_companion(t.name)) continue;
    if (!is_matrix(t)) {
      PRIMAL_CHECK(!is_lut(t.type), "{}: LUT tensor '{}' is not a matrix", in, t.name);
      w.add_tensor(t.name, t.type, t.ne, t.data, t.nbytes);
      continue;
    }
    PRIMAL_CHECK(can_dequantize(t), "{}: tensor '{}' of type {} cannot be read", in, t.name, dtype_name(t.type));
    DType type = o.type;
    if (t.ne[0] % traits(type).block != 0) {
      log(fmt::format("{}: rows of {} are not whole {} blocks, writing F16", t.name, t.ne[0], dtype_name(type)));
      type = DType::F16;
    }
    const bool exact = lut_exports_exactly(t, type) || t.type == type;
    exact ? ++rep.exact : ++rep.requantized;
    const TensorRef* tp = &t;
    if (t.type == type) {  // already the target type: copied
      w.add_tensor(t.name, t.type, t.ne, t.data, t.nbytes);
    } else {
      w.add_tensor(t.name, type, t.ne, [tp, type](uint8_t* dst, size_t nbytes) {
        const size_t rb = row_bytes(type, tp->ne[0]);
        PRIMAL_CHECK(rb * size_t(tp->ne[1]) == nbytes, "{}: internal size mismatch", tp->name);
#pragma omp parallel for schedule(dynamic, 64)
        for (int64_t r = 0; r < tp->ne[1]; ++r) export_row(*tp, r, type, dst + size_t(r) * rb);
      });
    }
    log(fmt::format("  {:<28} {:<6} -> {:<6} {}", t.name, dtype_name(t.type), dtype_name(type),
                    exact ? "exact" : "requantized"));
  }
  log(fmt::format("writing {} ({} tensors; {} matrices exact, {} requantized)", out, w.tensor_count(), rep.exact,
                  rep.requantized));
  w.write(out);
  return rep;
}

}  // namespace primal
