// LUT models end to end on the tiny hand-made checkpoint (tests/hf_fixture.h): quantize, load,
// dequantize against the float weights, export to IQ4_NL / Q8_0 bit for bit, refusals before any
// file exists, damaged LUT files, and the size report.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <vector>

#include "core/error.h"
#include "core/half.h"
#include "hf_fixture.h"
#include "io/convert.h"
#include "io/gguf.h"
#include "io/gguf_writer.h"
#include "io/model_source.h"
#include "quant/dequant.h"
#include "quant/lut_export.h"
#include "quant/lut_format.h"
#include "quant/lut_grid.h"
#include "quant/lut_model.h"
#include "quant/lut_pack.h"
#include "testing.h"

using namespace primal;
namespace fs = std::filesystem;

namespace {

bool has(const std::string& text, const std::string& what) { return text.find(what) != std::string::npos; }

// The tiny checkpoint and its F32 conversion (the reference weights, in llama.cpp's layout).
struct Tiny {
  std::string dir, f32;
  Tiny() {
    dir = test::temp_dir() + "/tiny";
    f32 = test::temp_dir() + "/tiny-f32.gguf";
    if (!fs::exists(f32)) {
      test::write_tiny_model(dir, test::TinyModel{});
      ConvertOptions o;
      o.type = DType::F32;
      convert_hf_to_gguf(dir, f32, o);
    }
  }
};

std::string quantize(const std::string& name, LutQuantOptions o) {
  Tiny t;
  const std::string out = test::temp_dir() + "/" + name + ".gguf";
  quantize_model(t.dir, out, o);
  return out;
}

std::vector<float> rows_of(const TensorRef& t) {
  std::vector<float> v(static_cast<size_t>(t.nelements()));
  dequantize_tensor(t, v.data());
  return v;
}

// Relative squared error of every matrix of `lut` against the float reference.
void expect_close_to_float(const std::string& lut, double max_rel) {
  Tiny tiny;
  auto ref = ModelSource::open(tiny.f32);
  auto m = ModelSource::open(lut);
  int matrices = 0;
  for (const TensorRef& r : ref->tensors()) {
    const TensorRef& q = m->tensor(r.name);
    if (r.ne.size() != 2) {  // vectors are copied unchanged
      EXPECT_EQ(q.type, r.type) << r.name;
      EXPECT_EQ(std::memcmp(q.data, r.data, r.nbytes), 0) << r.name;
      continue;
    }
    ++matrices;
    EXPECT_TRUE(is_lut(q.type)) << r.name;
    ASSERT_TRUE(q.lut.grid && q.lut.scale) << r.name;
    const auto a = rows_of(r), b = rows_of(q);
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); ++i) num += (a[i] - b[i]) * (a[i] - b[i]), den += a[i] * a[i];
    EXPECT_LT(num / den, max_rel) << r.name;
    EXPECT_GT(num / den, 0.0) << r.name;  // it was quantized
  }
  EXPECT_EQ(matrices, 2 + 7 * 2);  // embedding, head, 7 per layer
}

std::string error_of(auto&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

// A 16-level grid over weights uniform in [-a, a] leaves a relative MSE near
// (step^2 / 12) / (a^2 / 3) with step = 2a/15: 0.0044; 256 levels: 1.7e-5 (clipping and the
// grid's shape move these by less than 2x).
TEST(LutModel, QuantizedWeightsAreCloseToTheFloats) {
  LutQuantOptions o;
  o.type = DType::LUT4;
  o.grid = GridKind::IQ4NL;
  o.group = 32;
  expect_close_to_float(quantize("l4", o), 0.0088);
  o.type = DType::LUT8;
  o.grid = GridKind::Uniform;
  o.group = 0;  // one scale per row
  expect_close_to_float(quantize("l8", o), 3.5e-5);
}

TEST(LutModel, FileLayoutAndMetadata) {
  LutQuantOptions o;
  o.type = DType::LUT4;
  o.grid = GridKind::Prime;
  o.group = 32;
  const std::string path = quantize("layout", o);
  GgufFile f(path);
  EXPECT_EQ(f.get_int("primal.lut.version"), 1);
  EXPECT_EQ(f.get_str("primal.lut.format"), "lut4");
  EXPECT_EQ(f.get_str("primal.lut.grid"), "prime");
  EXPECT_EQ(f.get_int("primal.lut.group"), 32);
  EXPECT_FALSE(f.has("general.file_type"));
  const auto& g = f.tensor("lut_grid.LUT4");
  EXPECT_EQ(g.type, DType::F32);
  EXPECT_EQ(std::memcmp(g.data, prime_grid(16).data(), 64), 0);
  const auto& w = f.tensor("blk.1.ffn_down.weight");  // 96 inputs: 3 groups per row
  EXPECT_EQ(w.type, DType::LUT4);
  EXPECT_EQ(w.ne, (std::vector<int64_t>{96, 64}));
  EXPECT_EQ(w.nbytes, 96u * 64 / 2);
  const auto& s = f.tensor("blk.1.ffn_down.weight.scale");
  EXPECT_EQ(s.type, DType::F16);
  EXPECT_EQ(s.ne, (std::vector<int64_t>{3, 64}));
  EXPECT_EQ(f.find_tensor("blk.1.ffn_down.weight.grid"), nullptr);  // the shared grid serves

  // Learned grids are per tensor and replace the shared one.
  o.grid = GridKind::Learned;
  GgufFile lf(quantize("learned", o));
  EXPECT_EQ(lf.find_tensor("lut_grid.LUT4"), nullptr);
  const auto& lg = lf.tensor("blk.0.attn_q.weight.grid");
  EXPECT_EQ(lg.ne, (std::vector<int64_t>{16}));
  const float* v = reinterpret_cast<const float*>(lg.data);
  EXPECT_NO_THROW(validate_grid(v, 16, 16, "learned"));
  auto m = ModelSource::open(lf.path());
  EXPECT_EQ(std::memcmp(m->tensor("blk.0.attn_q.weight").lut.grid, v, 64), 0);
}

TEST(LutModel, SizeReport) {
  LutQuantOptions o;
  o.type = DType::LUT4;
  o.grid = GridKind::NF4;
  o.group = 32;
  GgufFile f(quantize("size", o));
  const LutSizeReport r = model_size_report(f);
  using T = test::TinyModel;
  const int64_t per_layer = T::C * (T::NH * T::HS + 2 * T::KVH * T::HS) + T::NH * T::HS * T::C + 3 * T::C * T::F;
  const int64_t linear = T::L * per_layer, vectors = T::L * 2 * T::C + T::C;
  EXPECT_EQ(r.linear_params, linear);
  EXPECT_EQ(r.params, linear + 2 * T::V * T::C + vectors);
  // Every matrix: 4 bits a weight and a 16-bit scale per 32; vectors F32; the grid 16 floats.
  EXPECT_DOUBLE_EQ(r.bits, double(r.params - vectors) * 4.5 + 32.0 * double(vectors) + 16 * 32);
  EXPECT_DOUBLE_EQ(r.linear_bpw(), 4.5 + 16.0 * 32 * double(linear) / double(linear + 2 * T::V * T::C) /
                                             double(linear));
}

TEST(LutExport, Iq4nlGroup32IsBitIdentical) {
  LutQuantOptions o;
  o.type = DType::LUT4;
  o.grid = GridKind::IQ4NL;
  o.group = 32;
  const std::string lut = quantize("exp4", o), out = test::temp_dir() + "/exp4-iq4nl.gguf";
  ExportOptions eo;
  eo.type = DType::IQ4_NL;
  const ExportReport rep = export_model(lut, out, eo);
  EXPECT_EQ(rep.exact, 16);
  EXPECT_EQ(rep.requantized, 0);
  auto a = ModelSource::open(lut), b = ModelSource::open(out);
  for (const TensorRef& t : a->tensors()) {
    if (is_lut_companion(t.name)) {
      EXPECT_EQ(b->find(t.name), nullptr) << t.name;
      continue;
    }
    const TensorRef& e = b->tensor(t.name);
    if (!is_lut(t.type)) continue;
    EXPECT_EQ(e.type, DType::IQ4_NL) << t.name;
    const auto x = rows_of(t), y = rows_of(e);
    ASSERT_EQ(std::memcmp(x.data(), y.data(), x.size() * 4), 0) << t.name;
  }
  GgufFile g(out);
  EXPECT_EQ(g.get_int("general.file_type"), 25);  // LLAMA_FTYPE_MOSTLY_IQ4_NL
  EXPECT_FALSE(g.has("primal.lut.version"));
}

TEST(LutExport, UniformLut8Group32IsBitIdenticalQ8_0) {
  LutQuantOptions o;
  o.type = DType::LUT8;
  o.grid = GridKind::Uniform;
  o.group = 32;
  const std::string lut = quantize("exp8", o), out = test::temp_dir() + "/exp8-q8.gguf";
  ExportOptions eo;
  eo.type = DType::Q8_0;
  EXPECT_EQ(export_model(lut, out, eo).exact, 16);
  auto a = ModelSource::open(lut), b = ModelSource::open(out);
  const auto x = rows_of(a->tensor("output.weight")), y = rows_of(b->tensor("output.weight"));
  EXPECT_EQ(std::memcmp(x.data(), y.data(), x.size() * 4), 0);
}

TEST(LutExport, OtherGridsAreRequantizedClosely) {
  LutQuantOptions o;
  o.type = DType::LUT4;
  o.grid = GridKind::NF4;
  o.group = 32;
  const std::string lut = quantize("expnf", o);
  for (DType t : {DType::IQ4_NL, DType::Q8_0, DType::F16}) {
    const std::string out = test::temp_dir() + "/expnf-" + dtype_name(t) + ".gguf";
    ExportOptions eo;
    eo.type = t;
    const ExportReport rep = export_model(lut, out, eo);
    EXPECT_EQ(rep.exact, 0);
    EXPECT_EQ(rep.requantized, 16);
    auto a = ModelSource::open(lut), b = ModelSource::open(out);
    const auto x = rows_of(a->tensor("blk.0.ffn_up.weight")), y = rows_of(b->tensor("blk.0.ffn_up.weight"));
    double num = 0, den = 0;
    for (size_t i = 0; i < x.size(); ++i) num += (x[i] - y[i]) * (x[i] - y[i]), den += x[i] * x[i];
    // F16 rounds (2^-11 relative), Q8_0 adds 8-bit steps, IQ4_NL a second 4-bit quantization.
    EXPECT_LT(num / den, t == DType::F16 ? 1e-6 : t == DType::Q8_0 ? 1e-4 : 0.02) << dtype_name(t);
  }
}

TEST(LutModel, RefusesBeforeWritingAnything) {
  Tiny tiny;
  const std::string out = test::temp_dir() + "/refused.gguf";
  auto refused = [&](LutQuantOptions o, const std::string& in, const std::string& what) {
    const std::string msg = error_of([&] { quantize_model(in, out, o); });
    EXPECT_TRUE(has(msg, what)) << msg;
    EXPECT_FALSE(fs::exists(out)) << what;
    // Nor a converted copy of the checkpoint (quantize's temporary files carry its pid).
    const std::string mine = "primal-quantize-" + std::to_string(getpid()) + "-";
    for (const auto& e : fs::directory_iterator(fs::temp_directory_path()))
      EXPECT_FALSE(has(e.path().filename().string(), mine)) << what;
  };
  LutQuantOptions o;
  o.group = 64;  // ffn_down rows hold 96 weights
  refused(o, tiny.dir, "tensor 'blk.0.ffn_down.weight': a group of 64 does not divide the row of 96 weights");
  o.group = 32;
  o.type = DType::LUT8;
  o.grid = GridKind::IQ4NL;
  refused(o, tiny.dir, "grid iq4nl has 16 entries (lut4 only); this format needs 256");
  o = LutQuantOptions{};
  o.tensor_types["blk.9.attn_q.weight"] = DType::LUT8;
  refused(o, tiny.dir, "--tensor-type names 'blk.9.attn_q.weight', not a matrix of the model");
  o = LutQuantOptions{};
  o.mixed_bits = 4;
  refused(o, tiny.dir, "--mixed needs a calibration text (--calib FILE)");
  o = LutQuantOptions{};
  o.act_aware = true;
  o.calib = test::temp_dir() + "/no-such-text.txt";
  refused(o, tiny.dir, "no-such-text.txt: cannot read it");
  o = LutQuantOptions{};
  refused(o, test::data_path("models/ref-llama-code/ref-llama-code-Q8_0.gguf"),
          "' is Q8_0; quantize reads F32, F16 or BF16 weights (--allow-requantize");
}

TEST(LutModel, GoodInputIsNotRefused) {
  // The twin of the refusals: an F32 GGUF input (not an HF folder) is quantized.
  Tiny tiny;
  const std::string out = test::temp_dir() + "/from-gguf.gguf";
  LutQuantOptions o;
  o.type = DType::LUT3;
  o.grid = GridKind::NF4;
  o.group = 32;
  quantize_model(tiny.f32, out, o);
  auto m = ModelSource::open(out);
  EXPECT_EQ(m->tensor("output.weight").type, DType::LUT3);
}

TEST(LutModel, AnInterruptedWriteLeavesNoFile) {
  Tiny tiny;
  auto src = ModelSource::open(tiny.f32);
  GgufWriter w;
  const std::string out = test::temp_dir() + "/interrupted.gguf";
  const TensorRef& t = src->tensor("blk.0.attn_q.weight");
  w.add_tensor("before", DType::F32, {4}, t.data, 16);
  add_lut_tensors(w, t.name, DType::LUT4, 64, 64, 32, false, []() -> LutMatrix { throw Error("stopped midway"); });
  EXPECT_TRUE(has(error_of([&] { w.write(out); }), "stopped midway"));
  EXPECT_FALSE(fs::exists(out));
  for (const auto& e : fs::directory_iterator(test::temp_dir()))
    EXPECT_FALSE(has(e.path().filename().string(), "interrupted")) << e.path();
}

TEST(LutModel, DamagedFilesAreRefusedOnLoad) {
  LutQuantOptions o;
  o.type = DType::LUT4;
  o.grid = GridKind::NF4;
  o.group = 32;
  const std::string good = quantize("damage", o);
  GgufFile f(good);
  // Rewrite the file with one change; the loader must name the tensor and the problem.
  auto damaged = [&](const std::string& tag, auto&& edit) {
    GgufWriter w;
    for (const auto& [k, v] : f.kv()) w.add_kv(k, v);
    for (const auto& t : f.tensors()) edit(w, t);
    const std::string path = test::temp_dir() + "/damaged-" + tag + ".gguf";
    w.write(path);
    return error_of([&] { ModelSource::open(path); });
  };
  auto copy = [](GgufWriter& w, const GgufTensorInfo& t) { w.add_tensor(t.name, t.type, t.ne, t.data, t.nbytes); };
  EXPECT_TRUE(has(damaged("noscale",
                          [&](GgufWriter& w, const GgufTensorInfo& t) {
                            if (t.name != "blk.1.attn_v.weight.scale") copy(w, t);
                          }),
                  "LUT tensor 'blk.1.attn_v.weight': its scales 'blk.1.attn_v.weight.scale' are missing"));
  EXPECT_TRUE(has(damaged("nogrid",
                          [&](GgufWriter& w, const GgufTensorInfo& t) {
                            if (t.name != "lut_grid.LUT4") copy(w, t);
                          }),
                  "no grid ('token_embd.weight.grid' or 'lut_grid.LUT4')"));
  std::vector<float> unsorted = nf4_grid(16);
  std::swap(unsorted[3], unsorted[4]);
  EXPECT_TRUE(has(damaged("unsorted",
                          [&](GgufWriter& w, const GgufTensorInfo& t) {
                            if (t.name == "lut_grid.LUT4") w.add_tensor(t.name, t.type, t.ne, unsorted.data(), 64);
                            else copy(w, t);
                          }),
                  "not strictly ascending at entry 4"));
  const std::vector<float> big(256, 0.0f);
  EXPECT_TRUE(has(damaged("gridsize",
                          [&](GgufWriter& w, const GgufTensorInfo& t) {
                            if (t.name == "lut_grid.LUT4") w.add_tensor(t.name, t.type, {256}, big.data(), 1024);
                            else copy(w, t);
                          }),
                  "grid has 256 entries, the format needs 16"));
  std::vector<uint16_t> scales(size_t(3 * 64), f32_to_f16(0.01f));
  EXPECT_TRUE(has(damaged("scaleshape",
                          [&](GgufWriter& w, const GgufTensorInfo& t) {
                            if (t.name == "blk.0.ffn_down.weight.scale")
                              w.add_tensor(t.name, DType::F16, {2, 96}, scales.data(), 2 * 96 * 2);
                            else copy(w, t);
                          }),
                  "scales of shape [2, 96] do not fit a matrix [96, 64]"));
  scales[17] = 0x7c00;  // +inf
  EXPECT_TRUE(has(damaged("inf",
                          [&](GgufWriter& w, const GgufTensorInfo& t) {
                            if (t.name == "blk.0.ffn_down.weight.scale")
                              w.add_tensor(t.name, DType::F16, {3, 64}, scales.data(), 3 * 64 * 2);
                            else copy(w, t);
                          }),
                  "scale 17 is not finite"));
}

TEST(LutCli, QuantizeInspectExport) {
  Tiny tiny;
  const std::string out = test::temp_dir() + "/cli.gguf", exp = test::temp_dir() + "/cli-iq4.gguf";
  auto r = test::run_primal("quantize " + tiny.dir + " " + out + " --format lut4 --grid iq4nl --group 32");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(has(r.err, "bits per weight")) << r.err;
  r = test::run_primal("inspect " + out);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(has(r.out, "primal.lut.grid = \"iq4nl\"")) << r.out;
  EXPECT_TRUE(has(r.out, "LUT4 x16")) << r.out;
  r = test::run_primal("export " + out + " " + exp + " --type iq4_nl");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(has(r.err, "16 matrices exact, 0 requantized")) << r.err;

  r = test::run_primal("quantize " + tiny.dir + " " + test::temp_dir() + "/bad.gguf --format lut4 --group 48");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(has(r.err, "primal: error: --group 48: expected 32, 64, 128 or row")) << r.err;
  r = test::run_primal("quantize " + tiny.dir + " " + test::temp_dir() + "/bad.gguf --grid fancy");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(has(r.err, "--grid fancy: expected one of prime, iq4nl, nf4, uniform, learned")) << r.err;
  r = test::run_primal("export " + out + " " + test::temp_dir() + "/bad.gguf --type q4_k");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(has(r.err, "--type q4_k: expected iq4_nl, q8_0 or f16")) << r.err;
  EXPECT_FALSE(fs::exists(test::temp_dir() + "/bad.gguf"));
}

// Mixed precision end to end on the tiny model: widths and scale groups chosen per matrix from the
// measured sensitivities, the whole file within the budget, groups that do not divide a matrix's
// rows skipped for that matrix only (ffn_down rows hold 96 weights: G64 impossible there).
TEST(LutMixed, ChoosesWidthAndGroupPerMatrixWithinTheBudget) {
  Tiny tiny;
  const std::string calib = test::temp_dir() + "/tiny-calib.txt";
  {
    std::string text;
    for (int i = 0; i < 400; ++i) text += (i % 3 ? "abcd ab cd " : "dcba a b ");
    std::FILE* f = std::fopen(calib.c_str(), "wb");
    ASSERT_TRUE(f);
    std::fwrite(text.data(), 1, text.size(), f);
    std::fclose(f);
  }
  LutQuantOptions o;
  o.grid = GridKind::NF4;
  o.group = 32;
  o.calib = calib;
  o.calib_tokens = 256;
  o.calib_ctx = 64;
  o.mixed_bits = 4.5;
  o.mixed_groups = {32, 64};
  const std::string out = quantize("mixed-groups", o);
  auto m = ModelSource::open(out);
  int64_t params = 0;
  double bits = 0;
  std::set<std::pair<DType, int64_t>> seen;
  for (const TensorRef& t : m->tensors()) {
    bits += 8.0 * double(t.nbytes);  // indices, scales, grids, vectors: the whole file's tensors
    const bool companion = t.name.rfind("lut_grid.", 0) == 0 || t.name.ends_with(".scale") || t.name.ends_with(".grid");
    if (companion) continue;
    params += t.nelements();
    if (!is_lut(t.type)) continue;
    ASSERT_TRUE(t.lut.group == 32 || t.lut.group == 64) << t.name << " G" << t.lut.group;
    if (t.name.find("ffn_down") != std::string::npos) EXPECT_EQ(t.lut.group, 32) << t.name;
    seen.insert({t.type, t.lut.group});
  }
  EXPECT_LE(bits / double(params), 4.5);
  EXPECT_GE(seen.size(), 2u) << "one choice for every matrix: the sensitivities were not used";
  expect_close_to_float(out, 0.3);

  // The sensitivity file: written on the first run, read on the next. Proof that it is read: a
  // huge KL planted for every candidate wider than LUT2 leaves no upgrade worth making, so the
  // second plan is LUT2 everywhere (the first, measured, is not).
  o.sensitivity_file = test::temp_dir() + "/mixed-sens.json";
  std::filesystem::remove(o.sensitivity_file);
  quantize("mixed-sens-1", o);
  nlohmann::json j;
  {
    std::ifstream f(o.sensitivity_file);
    ASSERT_TRUE(f.good());
    j = nlohmann::json::parse(f);
  }
  ASSERT_EQ(j["kl"].size(), size_t((16 * 2 - 2) * 6)) << "16 matrices x 2 groups (ffn_down: G32 only) x 6 widths";
  for (auto& [k, v] : j["kl"].items())
    if (k.find("|LUT2|") == std::string::npos) v = 1e9;
  std::ofstream(o.sensitivity_file) << j.dump();
  auto m2 = ModelSource::open(quantize("mixed-sens-2", o));
  int lut2 = 0;
  for (const TensorRef& t : m2->tensors()) lut2 += t.type == DType::LUT2;
  EXPECT_EQ(lut2, 16);
  int lut2_measured = 0;
  for (const TensorRef& t : m->tensors()) lut2_measured += t.type == DType::LUT2;
  EXPECT_LT(lut2_measured, 16);

  // A list none of whose groups divides some matrix is refused before any file exists.
  o.mixed_groups = {128};
  const std::string bad = test::temp_dir() + "/mixed-g128.gguf";
  const std::string msg = error_of([&] { quantize_model(tiny.dir, bad, o); });
  EXPECT_TRUE(has(msg, "no scale group of the list divides the rows of")) << msg;
  EXPECT_FALSE(fs::exists(bad));
}
