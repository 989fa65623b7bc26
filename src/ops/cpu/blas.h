// OpenBLAS (cblas_sgemm) for the CPU ops, when built with it (PRIMAL_HAVE_OPENBLAS).
#pragma once

#ifdef PRIMAL_HAVE_OPENBLAS
#include <cblas.h>

#include <mutex>

namespace primal::cpu {

// OpenBLAS's own thread pool would fight the OpenMP one: every sgemm of the ops runs
// single-threaded inside an OpenMP worker, on its own tile. Call before the first sgemm.
inline void single_threaded_blas() {
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
}

}  // namespace primal::cpu
#endif
