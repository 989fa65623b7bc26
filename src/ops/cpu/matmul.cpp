#include "ops/cpu/matmul.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include <omp.h>

#include "core/error.h"
#include "quant/dequant.h"
#include "quant/lut_pack.h"

#include "ops/cpu/blas.h"

namespace primal::cpu {
namespace {

// Rows of W dequantized at once by one thread: ~256 KiB of fp32, so that the tile stays in L2
// while sgemm streams the activations past it.
constexpr int64_t kTileFloats = 64 * 1024;
// Below this many tokens a tile + sgemm does not pay for itself: dot products straight from the
// dequantized row are as fast and need no tile.
constexpr int64_t kGemmMinT = 4;

// Dot path: each thread dequantizes one row of W at a time and dots it with every token; a single
// token (decode) uses the fused decode-and-dot of quant/ (no row buffer, fp64 across blocks);
// LUT rows need their scale and grid, so they always take the row buffer.
void matmul_rows(float* out, const float* inp, const TensorRef& w, int64_t T, int64_t I, int64_t O) {
  if (T == 1 && !is_lut(w.type)) {
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < O; ++o) out[o] = vec_dot_row(w.type, w.row(o), inp, I);
    return;
  }
#pragma omp parallel
  {
    std::vector<float> row(static_cast<size_t>(I));
#pragma omp for schedule(static)
    for (int64_t o = 0; o < O; ++o) {
      dequantize_tensor_row(w, o, row.data());
      for (int64_t t = 0; t < T; ++t) {
        const float* x = inp + t * I;
        float acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t i = 0; i < I; ++i) acc += x[i] * row[size_t(i)];
        out[t * O + o] = acc;
      }
    }
  }
}

#ifdef PRIMAL_HAVE_OPENBLAS
// GEMM path: W is cut into tiles of R rows; each tile is dequantized once and multiplied with
// all T tokens by sgemm, writing the columns [o0, o0 + R) of out.
void matmul_tiles(float* out, const float* inp, const TensorRef& w, int64_t T, int64_t I, int64_t O) {
  single_threaded_blas();
  // Tiles small enough to stay in cache, and at least 4 per thread so that small matrices
  // (a 256-row projection) still keep every core busy.
  const int64_t per_thread = (O + 4 * omp_get_max_threads() - 1) / (4 * omp_get_max_threads());
  const int64_t R = std::clamp<int64_t>(std::min(kTileFloats / I, (per_thread + 15) / 16 * 16), 16, O);
  const int64_t n_tiles = (O + R - 1) / R;
  // An fp32 weight aligned for floats is used in place, without a copy.
  const bool direct = w.type == DType::F32 && reinterpret_cast<uintptr_t>(w.data) % alignof(float) == 0;
#pragma omp parallel
  {
    std::vector<float> tile(direct ? 0 : size_t(R * I));
#pragma omp for schedule(dynamic, 1)
    for (int64_t k = 0; k < n_tiles; ++k) {
      const int64_t o0 = k * R, rows = std::min(R, O - o0);
      const float* wt = tile.data();
      if (direct) {
        wt = reinterpret_cast<const float*>(w.row(o0));
      } else {
        for (int64_t r = 0; r < rows; ++r) dequantize_tensor_row(w, o0 + r, tile.data() + r * I);
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(T), int(rows), int(I), 1.0f, inp, int(I), wt,
                  int(I), 0.0f, out + o0, int(O));
    }
  }
}
#endif

}  // namespace

void matmul_forward(float* out, const float* inp, const TensorRef& w, const float* bias, int64_t T) {
  PRIMAL_CHECK(w.ne.size() == 2, "matmul: weight '{}' is not a matrix ({} dimensions)", w.name, w.ne.size());
  const int64_t I = w.ne[0], O = w.ne[1];
  PRIMAL_CHECK(can_dequantize(w), "weight '{}': unsupported tensor type {} (no CPU dequantizer)", w.name,
               dtype_name(w.type));
  PRIMAL_CHECK(w.nbytes == row_bytes(w.type, I) * size_t(O), "weight '{}': {} bytes for {} rows of {} {}",
               w.name, w.nbytes, O, I, dtype_name(w.type));
  if (T <= 0) return;
#ifdef PRIMAL_HAVE_OPENBLAS
  if (T >= kGemmMinT)
    matmul_tiles(out, inp, w, T, I, O);
  else
#endif
    matmul_rows(out, inp, w, T, I, O);
  if (bias) {
    for (int64_t t = 0; t < T; ++t)
      for (int64_t o = 0; o < O; ++o) out[t * O + o] += bias[o];
  }
}

}  // namespace primal::cpu
