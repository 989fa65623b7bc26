// Mixed precision (the seeds' "adaptive mixed precision"): each matrix gets its own index width
// so that the model's average bits per weight stays within a budget while the bits go where the
// model is sensitive.
//
// Sensitivity is measured, not guessed: for every matrix t and every candidate width b, the model
// is run on the calibration windows with only t quantized at b, and the mean KL divergence of its
// next-token distributions from the float model's is recorded, KL_t(b) (the matrix's effect on
// the output, including everything downstream of it). The allocation then minimizes
// sum_t KL_t(b_t) subject to total bits <= budget * parameters (whole file: indices, scales,
// grids, and the unquantized norms): starting from the narrowest width everywhere, it repeatedly
// makes the upgrade with the largest KL reduction per added bit that still fits (any wider width
// of a matrix is a candidate upgrade, so a non-convex KL curve does not stop it early).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "quant/lut_calib.h"
#include "quant/lut_model.h"

namespace primal {

struct MixedOptions {
  double budget_bits = 4.0;  // average bits per weight of the whole file
  LutQuantOptions base;      // grid, group, activation-aware
  std::vector<DType> widths = {DType::LUT2, DType::LUT3, DType::LUT4, DType::LUT5, DType::LUT6, DType::LUT8};
  // Scale groups tried for every width (each matrix gets its own); empty: base.group only. A group
  // that does not divide a matrix's rows is skipped for that matrix.
  std::vector<int64_t> groups;
  int64_t kl_tokens = 512;  // calibration tokens the KL is measured on
  // A JSON file of measured KLs reused across runs (e.g. several budgets): entries are read when
  // the file's key (source, grid, calibration, options) equals this run's, missing ones measured
  // and the file rewritten (atomically, after every matrix). Empty: no file.
  std::string cache;
};

struct MixedCandidate {
  DType type;
  double bits;  // of the matrix, stored
  double kl;    // measured KL(float || only this matrix quantized), nats per token
  int64_t group = 0;  // weights per scale (0: the plan's own)
};

// Candidates per matrix (same order as `plan`), measured on stats.windows.
std::vector<std::vector<MixedCandidate>> measure_sensitivity(const ModelSource& src,
                                                             const std::vector<LutTensorPlan>& plan,
                                                             const CalibStats& stats, const MixedOptions& o);

// The greedy allocation above; fixed_bits: bits of everything that is not a planned matrix.
// Returns the chosen candidate index per matrix; throws when even the narrowest widths exceed
// the budget.
std::vector<size_t> allocate_bits(const std::vector<std::vector<MixedCandidate>>& cands, double fixed_bits,
                                  double budget_total_bits);

// plan with the widths chosen for the budget (logs the table of choices through o.base.log).
std::vector<LutTensorPlan> plan_mixed_precision(const ModelSource& src, const std::vector<LutTensorPlan>& plan,
                                                const CalibStats& stats, const MixedOptions& o);

}  // namespace primal
