#include "quant/lut_mixed.h"

#include <fmt/format.h>

#include "core/error.h"
#include "io/model_source.h"
#include "quant/lut_format.h"
#include "quant/lut_pack.h"

namespace primal {

std::vector<size_t> allocate_bits(const std::vector<std::vector<MixedCandidate>>& cands, double fixed_bits,
                                  double budget_total_bits) {
  std::vector<size_t> pick(cands.size(), 0);
  double total = fixed_bits;
  for (size_t t = 0; t < cands.size(); ++t) {
    PRIMAL_CHECK(!cands[t].empty(), "mixed precision: matrix {} has no candidate width", t);
    // Start at the narrowest candidate.
    for (size_t k = 1; k < cands[t].size(); ++k)
      if (cands[t][k].bits < cands[t][pick[t]].bits) pick[t] = k;
    total += cands[t][pick[t]].bits;
  }
  PRIMAL_CHECK(total <= budget_total_bits,
               "mixed precision: even the narrowest widths need {:.0f} bits, over the budget of {:.0f}", total,
               budget_total_bits);
  for (;;) {
    // The upgrade with the largest KL reduction per added bit that fits.
    double best_rate = 0;
    size_t bt = cands.size(), bk = 0;
    for (size_t t = 0; t < cands.size(); ++t) {
      const MixedCandidate& cur = cands[t][pick[t]];
      for (size_t k = 0; k < cands[t].size(); ++k) {
        const MixedCandidate& c = cands[t][k];
        const double add = c.bits - cur.bits, gain = cur.kl - c.kl;
        if (add <= 0 || gain <= 0 || total + add > budget_total_bits) continue;
        if (gain / add > best_rate) best_rate = gain / add, bt = t, bk = k;
      }
    }
    if (bt == cands.size()) break;
    total += cands[bt][bk].bits - cands[bt][pick[bt]].bits;
    pick[bt] = bk;
  }
  return pick;
}

std::vector<LutTensorPlan> plan_mixed_precision(const ModelSource& src, const std::vector<LutTensorPlan>& plan,
                                                const CalibStats& stats, const MixedOptions& o) {
  auto log = [&](const std::string& s) {
    if (o.base.log) o.base.log(s);
  };
  for (DType t : o.widths) check_lut_shape(t, plan.front().ne0, plan.front().group, "mixed precision");
  for (const auto& p : plan)
    for (DType t : o.widths) check_lut_shape(t, p.ne0, p.group, src.path() + ": tensor '" + p.name + "'");
  // Bits outside the matrices: every other tensor as stored, plus the shared grids.
  int64_t params = 0;
  double fixed = 0;
  for (const auto& t : src.tensors()) {
    params += t.nelements();
    bool planned = false;
    for (const auto& p : plan) planned = planned || p.name == t.name;
    if (!planned) fixed += 8.0 * double(t.nbytes);
  }
  const bool learned = o.base.grid == GridKind::Learned;
  if (!learned)
    for (DType t : o.widths) fixed += 32.0 * double(lut_entries(t));
  const auto cands = measure_sensitivity(src, plan, stats, o);
  const auto pick = allocate_bits(cands, fixed, o.budget_bits * double(params));
  std::vector<LutTensorPlan> out = plan;
  double total = fixed, kl = 0;
  log(fmt::format("mixed precision: {:.2f} bits per weight budget over {} parameters", o.budget_bits, params));
  for (size_t t = 0; t < plan.size(); ++t) {
    const MixedCandidate& c = cands[t][pick[t]];
    out[t].type = c.type;
    total += c.bits;
    kl += c.kl;
    std::string row;
    for (const auto& k : cands[t]) row += fmt::format(" {}:{:.2e}", dtype_name(k.type), k.kl);
    log(fmt::format("  {:<28} -> {:<5} KL by width{}", plan[t].name, dtype_name(c.type), row));
  }
  log(fmt::format("mixed precision: {:.4f} bits per weight planned, sum of measured KL {:.4f}", total / double(params),
                  kl));
  return out;
}

}  // namespace primal
