// Whether kernel launches on this thread use programmatic dependent launch (see launch.cuh);
// host code turns it on around a decode step with PdlScope.
#pragma once

namespace primal::cuda {

bool& pdl_enabled();

struct PdlScope {
  bool old;
  explicit PdlScope(bool on) : old(pdl_enabled()) { pdl_enabled() = on; }
  ~PdlScope() { pdl_enabled() = old; }
};

}  // namespace primal::cuda
