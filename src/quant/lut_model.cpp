#include "quant/lut_model.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>

#include "core/error.h"
#include "io/convert.h"
#include "io/gguf.h"
#include "io/gguf_writer.h"
#include "io/model_source.h"
#include "quant/dequant.h"
#include "quant/lut_calib.h"
#include "quant/lut_format.h"
#include "quant/lut_gptq.h"
#include "quant/lut_kmeans.h"
#include "quant/lut_mixed.h"
#include "quant/lut_pack.h"
#include "quant/lut_quantize.h"

namespace primal {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_matrix_weight(const TensorRef& t) { return t.ne.size() == 2 && ends_with(t.name, ".weight"); }

// The float type an HF checkpoint converts to without loss: the type of all its matrices when
// they share one, else F32.
DType lossless_type(const ModelSource& src) {
  std::set<DType> types;
  for (const auto& t : src.tensors())
    if (is_matrix_weight(t)) types.insert(t.type);
  return types.size() == 1 ? *types.begin() : DType::F32;
}

// A file removed when this goes out of scope (the converted copy of an HF checkpoint).
struct TempFile {
  std::string path;
  ~TempFile() {
    std::error_code ec;
    if (!path.empty()) std::filesystem::remove(path, ec);
  }
};

std::string temp_gguf_path() {
  namespace fs = std::filesystem;
  static int counter = 0;
  return (fs::temp_directory_path() /
          ("primal-quantize-" + std::to_string(getpid()) + "-" + std::to_string(counter++) + ".gguf"))
      .string();
}

void check_readable(const std::string& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  PRIMAL_CHECK(in.good() && !std::filesystem::is_directory(path), "{} {}: cannot read it", what, path);
}

}  // namespace

std::vector<LutTensorPlan> plan_lut_model(const ModelSource& src, const LutQuantOptions& o) {
  PRIMAL_CHECK(is_lut(o.type), "quantize: {} is not a LUT format", dtype_name(o.type));
  PRIMAL_CHECK(o.group >= 0, "quantize: group {} (expected 32, 64, 128 or row)", o.group);
  // The grid must exist at every width used (generated grids are checked by generating them).
  std::set<DType> used = {o.type};
  for (const auto& [name, t] : o.tensor_types) {
    PRIMAL_CHECK(is_lut(t), "quantize: --tensor-type {}: {} is not a LUT format", name, dtype_name(t));
    PRIMAL_CHECK(src.find(name) && is_matrix_weight(*src.find(name)), "{}: --tensor-type names '{}', not a matrix of the model",
                 src.path(), name);
    used.insert(t);
  }
  if (o.grid != GridKind::Learned)
    for (DType t : used) make_grid(o.grid, lut_entries(t));

  std::vector<LutTensorPlan> plan;
  for (const auto& t : src.tensors()) {
    if (!is_matrix_weight(t)) continue;
    PRIMAL_CHECK(o.allow_requantize || t.type == DType::F32 || t.type == DType::F16 || t.type == DType::BF16,
                 "{}: tensor '{}' is {}; quantize reads F32, F16 or BF16 weights (--allow-requantize to "
                 "dequantize it first)",
                 src.path(), t.name, dtype_name(t.type));
    PRIMAL_CHECK(can_dequantize(t), "{}: tensor '{}' of type {} cannot be read", src.path(), t.name,
                 dtype_name(t.type));
    LutTensorPlan p;
    p.name = t.name;
    p.ne0 = t.ne[0];
    p.ne1 = t.ne[1];
    p.group = o.group == 0 ? p.ne0 : o.group;
    auto it = o.tensor_types.find(t.name);
    p.type = it != o.tensor_types.end() ? it->second : o.type;
    check_lut_shape(p.type, p.ne0, p.group, src.path() + ": tensor '" + t.name + "'");
    plan.push_back(p);
  }
  PRIMAL_CHECK(!plan.empty(), "{}: no matrices to quantize", src.path());
  return plan;
}

double lut_tensor_bits(const LutTensorPlan& p, bool own_grid) {
  return double(p.ne0 * p.ne1) * lut_bits(p.type) + 16.0 * double(p.ne0 / p.group * p.ne1) +
         (own_grid ? 32.0 * double(lut_entries(p.type)) : 0.0);
}

LutMatrix quantize_planned(const TensorRef& t, const LutTensorPlan& p, const LutQuantOptions& o,
                           const CalibStats* stats) {
  PRIMAL_CHECK(t.ne.size() == 2 && t.ne[0] == p.ne0 && t.ne[1] == p.ne1, "quantize: tensor '{}' does not match its plan",
               t.name);
  const std::vector<float>* imp = stats && (o.act_aware || o.gptq) ? stats->importance_of(t.name) : nullptr;
  const std::vector<double>* H = stats && o.gptq ? stats->hessian_of(t.name) : nullptr;
  const float* w = imp ? imp->data() : nullptr;
  std::vector<float> W(static_cast<size_t>(p.ne0 * p.ne1));
  dequantize_tensor(t, W.data());
  std::vector<float> grid = o.grid == GridKind::Learned
                                ? learn_grid(W.data(), p.ne0, p.ne1, p.type, p.group, w, o.kmeans_iters).grid
                                : make_grid(o.grid, lut_entries(p.type));
  if (H) return lut_quantize_matrix_gptq(W.data(), p.ne0, p.ne1, p.type, p.group, std::move(grid), *H);
  return lut_quantize_matrix(W.data(), p.ne0, p.ne1, p.type, p.group, std::move(grid), w);
}

void quantize_model(const std::string& in, const std::string& out, const LutQuantOptions& o) {
  auto log = [&](const std::string& s) {
    if (o.log) o.log(s);
  };
  const bool learned = o.grid == GridKind::Learned;
  PRIMAL_CHECK(o.calib.empty() || o.calib_tokens > 0, "quantize: --calib-tokens must be positive");
  PRIMAL_CHECK(!(o.act_aware || o.gptq || o.mixed_bits > 0) || !o.calib.empty(),
               "quantize: {} needs a calibration text (--calib FILE)",
               o.mixed_bits > 0 ? "--mixed" : o.gptq ? "--gptq" : "--act-aware");

  // 1. Every check on the input, before anything is written.
  std::unique_ptr<ModelSource> src = ModelSource::open(in);
  std::vector<LutTensorPlan> plan = plan_lut_model(*src, o);
  if (!o.calib.empty()) check_readable(o.calib, "calibration text");
  PRIMAL_CHECK(std::filesystem::absolute(out) != std::filesystem::absolute(in), "quantize: the output {} is the input",
               out);

  // 2. An HF checkpoint becomes a GGUF with llama.cpp's layout first (lossless, temporary).
  TempFile converted;
  if (src->is_hf()) {
    converted.path = temp_gguf_path();
    ConvertOptions co;
    co.type = lossless_type(*src);
    log(fmt::format("{}: converting to a temporary {} GGUF", in, dtype_name(co.type)));
    convert_hf_to_gguf(in, converted.path, co);
    src = ModelSource::open(converted.path);
  }
  const GgufFile& gf = *src->gguf();

  // 3. Calibration: activation statistics (and, for mixed precision, each matrix's sensitivity).
  CalibStats stats;
  if (!o.calib.empty()) {
    log(fmt::format("calibration: {} tokens of {} in windows of {}", o.calib_tokens, o.calib, o.calib_ctx));
    stats = collect_calib_stats(*src, o.calib, o.calib_tokens, o.calib_ctx, o.gptq);
  }
  if (o.mixed_bits > 0) {
    MixedOptions mo;
    mo.budget_bits = o.mixed_bits;
    mo.base = o;
    mo.groups = o.mixed_groups;
    mo.cache = o.sensitivity_file;
    plan = plan_mixed_precision(*src, plan, stats, mo);
  }

  // 4. The writer: metadata of the source with primal.lut.*, tensors streamed one at a time.
  GgufWriter w;
  for (const auto& [k, v] : gf.kv()) {
    if (k == "general.file_type" || k == "general.quantization_version" || k.rfind("primal.lut.", 0) == 0) continue;
    w.add_kv(k, v);
  }
  std::set<DType> types;
  for (const auto& p : plan) types.insert(p.type);
  w.add_kv("primal.lut.version", GgufValue::u32(kLutFormatVersion));
  w.add_kv("primal.lut.format", GgufValue::string(o.mixed_bits > 0 || types.size() > 1
                                                       ? std::string("mixed")
                                                       : [&] {
                                                           std::string s = dtype_name(*types.begin());
                                                           for (auto& c : s) c = char(std::tolower(c));
                                                           return s;
                                                         }()));
  w.add_kv("primal.lut.grid", GgufValue::string(grid_name(o.grid)));
  w.add_kv("primal.lut.group", GgufValue::u32(uint32_t(o.group)));
  if (o.mixed_bits > 0) w.add_kv("primal.lut.mixed_bits", GgufValue::f32(float(o.mixed_bits)));
  if (!o.calib.empty()) {
    w.add_kv("primal.lut.activation_aware", GgufValue::boolean(o.act_aware));
    w.add_kv("primal.lut.gptq", GgufValue::boolean(o.gptq));
    w.add_kv("primal.lut.calibration", GgufValue::string(std::filesystem::path(o.calib).filename().string()));
  }
  if (!learned)
    for (DType t : types) {
      auto g = std::make_shared<std::vector<float>>(make_grid(o.grid, lut_entries(t)));
      w.add_tensor(lut_shared_grid_name(t), DType::F32, {int64_t(g->size())},
                   [g](uint8_t* dst, size_t n) { std::memcpy(dst, g->data(), n); });
    }

  std::map<std::string, const LutTensorPlan*> planned;
  for (const auto& p : plan) planned[p.name] = &p;
  for (const auto& t : src->tensors()) {
    auto it = planned.find(t.name);
    if (it == planned.end()) {
      w.add_tensor(t.name, t.type, t.ne, t.data, t.nbytes);
      continue;
    }
    const LutTensorPlan p = *it->second;
    const TensorRef* tr = &t;
    const CalibStats* st = o.calib.empty() ? nullptr : &stats;
    add_lut_tensors(w, t.name, p.type, p.ne0, p.ne1, p.group, learned, [tr, p, st, &o, &log]() {
      const auto t0 = std::chrono::steady_clock::now();
      LutMatrix m = quantize_planned(*tr, p, o, st);
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      log(fmt::format("  {:<28} {:<5} G{:<4} relative {} error {:.3e} ({:.1f} s)", p.name, dtype_name(p.type), p.group,
                      o.gptq && st && st->hessian_of(p.name) ? "output" : "weight",
                      m.energy > 0 ? m.error / m.energy : 0.0, secs));
      return m;
    });
  }
  log(fmt::format("writing {} ({} tensors)", out, w.tensor_count()));
  w.write(out);

  const LutSizeReport r = model_size_report(GgufFile(out));
  log(fmt::format("{}: {:.4f} bits per weight ({} parameters), linear layers {:.4f}", out, r.bpw(), r.params,
                  r.linear_bpw()));
}

}  // namespace primal
