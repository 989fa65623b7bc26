#include <algorithm>
#include <cstdint>
#include <limits>

#include "ops/cuda/gemv.cuh"
#include "quant/lut_pack.h"

namespace primal::cuda {
namespace {

// Lanes per row: the widest group that leaves at most ~15% of the lanes idle on the last sweep
// of a row of n_units 32-element units (rows of 1536 -> 16 lanes x 3 units each).
int lanes_per_row(int64_t n_units) {
  int best = 32;
  double best_eff = 0;
  for (int l : {32, 16, 8}) {
    const double eff = double(n_units) / double((n_units + l - 1) / l * l);
    if (eff >= 0.85) return l;
    if (eff > best_eff) best_eff = eff, best = l;
  }
  return best;
}

}  // namespace

void gemv(const GemvParams& p, cudaStream_t s) {
  PRIMAL_CHECK(p.n_seg >= 1 && p.n_seg <= 3, "gemv: {} segments (1..3)", p.n_seg);
  const MatrixView& w0 = p.seg[0].w;
  const int64_t I = w0.cols;
  PRIMAL_CHECK(I > 0 && I % 32 == 0, "gemv: input width {} is not a positive multiple of 32", I);
  PRIMAL_CHECK(p.x && reinterpret_cast<uintptr_t>(p.x) % 16 == 0, "gemv: input not 16-byte aligned");
  PRIMAL_CHECK(!p.norm_w || reinterpret_cast<uintptr_t>(p.norm_w) % 16 == 0, "gemv: norm weight not aligned");
  detail::GemvLaunch a;
  a.p = p;
  int64_t total = 0;
  for (int k = 0; k < 3; ++k) a.seg_end[k] = std::numeric_limits<int64_t>::max();
  for (int k = 0; k < p.n_seg; ++k) {
    const GemvSegment& g = p.seg[k];
    PRIMAL_CHECK(g.w.type == w0.type && g.w.cols == I, "gemv: segment {} is {} x {} {}, segment 0 is {} wide {}", k,
                 g.w.rows, g.w.cols, dtype_name(g.w.type), I, dtype_name(w0.type));
    PRIMAL_CHECK(g.w.q && g.w.rows > 0 && g.out, "gemv: segment {} has no data, rows or output", k);
    PRIMAL_CHECK(!is_lut(g.w.type) || (g.w.grid && g.w.s), "gemv: segment {} ({}) has no grid or scales", k,
                 dtype_name(g.w.type));
    PRIMAL_CHECK(p.mode == GemvMode::Store || !g.bias, "gemv: a bias needs the Store mode");
    total += g.w.rows;
    a.seg_end[k] = total;
  }
  a.n_rows = total;
  if (p.mode == GemvMode::SwiGLU) {
    PRIMAL_CHECK(p.n_seg == 2 && p.seg[1].w.rows == w0.rows, "gemv: SwiGLU needs gate and up of equal shape");
    a.n_rows = w0.rows;
  }
  a.lpr = lanes_per_row(I / 32);
  // Blocks of 128..512 threads, about one block's worth of rows per multiprocessor: every block
  // stages (and normalizes) the whole input once, so fewer, larger blocks repeat that less.
  const int64_t sms = sm_count();
  a.threads = int(128 * std::clamp<int64_t>((a.n_rows * a.lpr + 64 * sms) / (128 * sms), 1, 4));
  // Two rows per group halve the shared-memory reads per weight byte; only when the matrix has
  // rows enough to keep every multiprocessor busy with it.
  const int64_t groups = a.n_rows / (a.threads / a.lpr);
  a.rps = p.mode != GemvMode::SwiGLU && groups >= 8 * sms ? 2 : 1;
  // Few rows: fewer lanes with work than half the lanes of 16 warps per multiprocessor.
  a.deep = a.n_rows * a.lpr <= 16 * 32 * sms;
  if (detail::gemv_float(w0.type, a, s) || detail::gemv_legacy(w0.type, a, s) || detail::gemv_kquants(w0.type, a, s) ||
      detail::gemv_lut(w0.type, a, s))
    return;
  fail("gemv: no GPU kernel for {}", dtype_name(w0.type));
}

bool gemv_quantizes_input(DType t) {
  bool q = false;
#define PRIMAL_FLAG(T) q = fmt::Unit<T>::kInt8
  PRIMAL_FORMAT_SWITCH(t, PRIMAL_FLAG);
#undef PRIMAL_FLAG
  return q;
}

}  // namespace primal::cuda
