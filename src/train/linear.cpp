#include "train/linear.h"

#include <algorithm>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "ops/cpu/gemm.h"

namespace primal::train {
namespace {

constexpr int64_t kFwdRows = 256;  // rows of inp per forward task
constexpr int64_t kBwdRows = 32;   // rows of inp per dinp task
// Below this many multiply-adds a layer runs on one thread: a parallel region costs more than
// it saves, and far more when the cores are shared (a thread waits at the barrier for a slice).
constexpr int64_t kParallelWork = int64_t(1) << 22;

// A dense fp32 matrix is read in place by fp32 code; anything else goes through a tile buffer.
template <class F>
bool direct(const Matrix& W) {
  return !W.is_lut() && std::is_same_v<F, float>;
}

template <class F>
const F* dense_ptr(const Matrix& W, int64_t o0) {
  if constexpr (std::is_same_v<F, float>) return W.dense.data() + o0 * W.I;
  return nullptr;
}

}  // namespace

template <class F>
void linear_forward(F* out, const F* inp, int64_t N, const Matrix& W, const float* bias) {
  const int64_t O = W.O, I = W.I, R = lut_tile_rows(I);
  const int64_t n_tiles = (O + R - 1) / R, n_blocks = (N + kFwdRows - 1) / kFwdRows;
  const bool dir = direct<F>(W);
#pragma omp parallel if (N * O * I >= kParallelWork)
  {
    std::vector<F> tile(dir ? 0 : size_t(R * I));
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int64_t k = 0; k < n_tiles; ++k) {
      for (int64_t b = 0; b < n_blocks; ++b) {
        const int64_t o0 = k * R, rows = std::min(R, O - o0);
        const int64_t n0 = b * kFwdRows, n = std::min(kFwdRows, N - n0);
        const F* w = dir ? dense_ptr<F>(W, o0) : tile.data();
        if (!dir) W.rows(o0, rows, tile.data());
        cpu::gemm<F>(false, true, n, rows, I, F(1), inp + n0 * I, I, w, I, F(0), out + n0 * O + o0, O);
        if (bias)
          for (int64_t t = n0; t < n0 + n; ++t)
            for (int64_t o = o0; o < o0 + rows; ++o) out[t * O + o] += F(bias[o]);
      }
    }
  }
}

template <class F>
void linear_backward(F* dinp, bool accumulate, const F* dout, const F* inp, int64_t N, const Matrix& W,
                     const LinearGrad<F>& g) {
  const int64_t O = W.O, I = W.I, R = lut_tile_rows(I);
  const int64_t n_tiles = (O + R - 1) / R;
  PRIMAL_CHECK(!(W.is_lut() && g.dW), "{}: a LUT matrix has no dense gradient", W.name);
  PRIMAL_CHECK(W.is_lut() || !(g.dscale || g.sink), "{}: a dense matrix has no scales or indices", W.name);

  // dinp = dout W: row blocks of dout; within a block the tiles of W are summed in order.
  if (dinp) {
    const int64_t n_blocks = (N + kBwdRows - 1) / kBwdRows;
    const bool dir = direct<F>(W);
#pragma omp parallel if (N * O * I >= kParallelWork)
    {
      std::vector<F> tile(dir ? 0 : size_t(R * I));
#pragma omp for schedule(dynamic, 1)
      for (int64_t b = 0; b < n_blocks; ++b) {
        const int64_t n0 = b * kBwdRows, n = std::min(kBwdRows, N - n0);
        if (dir) {
          cpu::gemm<F>(false, false, n, I, O, F(1), dout + n0 * O, O, dense_ptr<F>(W, 0), I, accumulate ? F(1) : F(0),
                  dinp + n0 * I, I);
          continue;
        }
        for (int64_t k = 0; k < n_tiles; ++k) {
          const int64_t o0 = k * R, rows = std::min(R, O - o0);
          W.rows(o0, rows, tile.data());
          cpu::gemm<F>(false, false, n, I, rows, F(1), dout + n0 * O + o0, O, tile.data(), I,
                  (accumulate || k > 0) ? F(1) : F(0), dinp + n0 * I, I);
        }
      }
    }
  }
  if (!g.any()) return;

  // dW tile by tile: dW[o0 .. o0+rows) = dout[:, o0 .. o0+rows)^T inp.
#pragma omp parallel if (N * O * I >= kParallelWork)
  {
    std::vector<F> tile(W.is_lut() ? size_t(R * I) : 0);
#pragma omp for schedule(dynamic, 1)
    for (int64_t k = 0; k < n_tiles; ++k) {
      const int64_t o0 = k * R, rows = std::min(R, O - o0);
      if (g.dbias) {
        for (int64_t o = o0; o < o0 + rows; ++o) {
          double s = 0;
          for (int64_t t = 0; t < N; ++t) s += double(dout[t * O + o]);
          g.dbias[o] += F(s);
        }
      }
      if (!W.is_lut()) {
        if (g.dW) cpu::gemm<F>(true, false, rows, I, N, F(1), dout + o0, O, inp, I, F(1), g.dW + o0 * I, I);
        continue;
      }
      if (!g.dscale && !g.sink) continue;
      cpu::gemm<F>(true, false, rows, I, N, F(1), dout + o0, O, inp, I, F(0), tile.data(), I);
      const LutWeight& L = *W.lut;
      if (g.dscale) {
        for (int64_t r = 0; r < rows; ++r) {
          const F* d = tile.data() + r * I;
          for (int64_t gi = 0; gi < L.groups(); ++gi) {
            double s = 0;
            for (int64_t i = gi * L.G; i < (gi + 1) * L.G; ++i) s += double(d[i]) * double(L.grid[L.get(o0 + r, i)]);
            g.dscale[(o0 + r) * L.groups() + gi] += F(s);
          }
        }
      }
      if (g.sink) g.sink->tile(W, o0, rows, tile.data());
    }
  }
  if (g.sink) g.sink->done(W);
}

template void linear_forward<float>(float*, const float*, int64_t, const Matrix&, const float*);
template void linear_forward<double>(double*, const double*, int64_t, const Matrix&, const float*);
template void linear_backward<float>(float*, bool, const float*, const float*, int64_t, const Matrix&,
                                     const LinearGrad<float>&);
template void linear_backward<double>(double*, bool, const double*, const double*, int64_t, const Matrix&,
                                      const LinearGrad<double>&);

}  // namespace primal::train
