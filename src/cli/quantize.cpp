// primal quantize IN OUT --format lut2..lut6|lut8|lut16 --grid NAME --group 32|64|128|row [--mixed BITS]
// A float model (F32/F16/BF16 GGUF or HF checkpoint folder) into a LUT model (library code in
// quant/lut_model.h; file layout in quant/lut_format.h).
#include <fmt/format.h>

#include <memory>

#include "cli/commands.h"
#include "core/error.h"
#include "quant/lut_model.h"
#include "quant/lut_pack.h"

namespace primal::cli {
namespace {

struct QuantizeCli {
  std::string in, out, format = "lut4", grid = "iq4nl", group = "32", calib;
  std::vector<std::string> tensor_types;
  std::vector<int64_t> mixed_groups;
  std::string sensitivity;
  double mixed = 0;
  bool act_aware = false, gptq = false, allow_requantize = false, quiet = false;
  int64_t calib_tokens = 4096, calib_ctx = 512;
  int kmeans_iters = 10;
};

DType lut_format(const std::string& s, const std::string& flag) {
  const auto t = dtype_from_name(s);
  if (!t || !is_lut(*t)) fail("{} {}: expected lut2, lut3, lut4, lut5, lut6, lut8 or lut16", flag, s);
  return *t;
}

void run_quantize(const QuantizeCli& c) {
  LutQuantOptions o;
  o.type = lut_format(c.format, "--format");
  const auto g = grid_kind_from_name(c.grid);
  if (!g) fail("--grid {}: expected one of {}", c.grid, grid_names());
  o.grid = *g;
  if (c.group == "row") {
    o.group = 0;
  } else {
    char* end = nullptr;
    const long v = std::strtol(c.group.c_str(), &end, 10);
    if (*end || (v != 32 && v != 64 && v != 128)) fail("--group {}: expected 32, 64, 128 or row", c.group);
    o.group = v;
  }
  for (const auto& tt : c.tensor_types) {
    const auto eq = tt.find('=');
    if (eq == std::string::npos || eq == 0) fail("--tensor-type {}: expected NAME=FORMAT (e.g. output.weight=lut8)", tt);
    o.tensor_types[tt.substr(0, eq)] = lut_format(tt.substr(eq + 1), "--tensor-type " + tt.substr(0, eq) + "=");
  }
  if (c.mixed < 0 || (c.mixed > 0 && (c.mixed < 2 || c.mixed > 16)))
    fail("--mixed {}: expected an average of 2 to 16 bits per weight", c.mixed);
  o.mixed_bits = c.mixed;
  for (int64_t g : c.mixed_groups)
    if (g != 32 && g != 64 && g != 128) fail("--mixed-groups {}: expected 32, 64 or 128", g);
  if (!c.mixed_groups.empty() && c.mixed <= 0) fail("--mixed-groups needs --mixed BITS");
  o.mixed_groups = c.mixed_groups;
  if (!c.sensitivity.empty() && c.mixed <= 0) fail("--sensitivity needs --mixed BITS");
  o.sensitivity_file = c.sensitivity;
  o.calib = c.calib;
  o.act_aware = c.act_aware;
  o.gptq = c.gptq;
  o.calib_tokens = c.calib_tokens;
  o.calib_ctx = c.calib_ctx;
  o.kmeans_iters = c.kmeans_iters;
  o.allow_requantize = c.allow_requantize;
  if (!c.quiet) o.log = [](const std::string& s) { fmt::print(stderr, "{}\n", s); };
  quantize_model(c.in, c.out, o);
}

}  // namespace

void register_quantize(CLI::App& app) {
  auto c = std::make_shared<QuantizeCli>();
  auto* cmd = app.add_subcommand("quantize", "Quantize a float model (F32/F16/BF16 GGUF or HF folder) into LUT form");
  cmd->add_option("in", c->in, "Input: a GGUF file with F32/F16/BF16 matrices, or an HF checkpoint folder")
      ->required()
      ->check(CLI::ExistingPath);
  cmd->add_option("out", c->out, "Output GGUF (written under a temporary name, renamed when complete)")->required();
  cmd->add_option("--format", c->format, "Index width of the matrices: lut2, lut3, lut4, lut5, lut6, lut8 or lut16")
      ->capture_default_str();
  cmd->add_option("--grid", c->grid, "Grid: prime, iq4nl (lut4 only), nf4, uniform or learned")->capture_default_str();
  cmd->add_option("--group", c->group, "Weights per fp16 scale: 32, 64, 128 or row")->capture_default_str();
  cmd->add_option("--tensor-type", c->tensor_types, "Per-matrix format, NAME=FORMAT (repeatable), e.g. output.weight=lut8");
  cmd->add_option("--mixed", c->mixed,
                  "Mixed precision: choose each matrix's width (lut2/3/4/5/6/8) by measured sensitivity so that the "
                  "whole file averages at most BITS bits per weight (needs --calib)");
  cmd->add_option("--mixed-groups", c->mixed_groups,
                  "Mixed precision: also choose each matrix's scale group among these (e.g. 32,64)")
      ->delimiter(',');
  cmd->add_option("--sensitivity", c->sensitivity,
                  "Mixed precision: keep the measured sensitivities in this JSON file and reuse them (another "
                  "budget with the same model, grid and calibration skips the measurement)");
  cmd->add_option("--calib", c->calib, "Calibration text (for --act-aware, --gptq and --mixed)");
  cmd->add_flag("--act-aware", c->act_aware,
                "Weight the scale search by the mean squared input activations on the calibration text");
  cmd->add_flag("--gptq", c->gptq,
                "Error-compensating quantization (GPTQ with the LUT grid) on the calibration activations");
  cmd->add_option("--calib-tokens", c->calib_tokens, "Calibration tokens used")->capture_default_str();
  cmd->add_option("--calib-ctx", c->calib_ctx, "Window length of the calibration forward")->capture_default_str();
  cmd->add_option("--kmeans-iters", c->kmeans_iters, "Lloyd iterations for --grid learned")->capture_default_str();
  cmd->add_flag("--allow-requantize", c->allow_requantize, "Accept already quantized matrices (dequantized first)");
  cmd->add_flag("-q,--quiet", c->quiet, "No progress on stderr");
  cmd->callback([c] { run_quantize(*c); });
}

}  // namespace primal::cli
