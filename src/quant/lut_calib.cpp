// TEMPORARY stub until the forward pass lands from branch infer.
#include "quant/lut_calib.h"
#include "quant/lut_mixed.h"
#include "core/error.h"
namespace primal {
const std::vector<float>* CalibStats::importance_of(const std::string& name) const {
  auto it = importance.find(name);
  return it == importance.end() ? nullptr : &it->second;
}
CalibStats collect_calib_stats(const ModelSource&, const std::string&, int64_t, int64_t) { fail("calibration needs the forward pass"); }
std::vector<std::vector<MixedCandidate>> measure_sensitivity(const ModelSource&, const std::vector<LutTensorPlan>&,
                                                             const CalibStats&, const MixedOptions&) { fail("no forward"); }
}
