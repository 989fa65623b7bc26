#include "quant/fp_exact.h"  // first: stored values must equal what dequantize_lut_row computes
#include "quant/lut_gptq.h"

#include <cmath>
#include <numeric>

#include "core/error.h"
#include "core/half.h"
#include "quant/lut_grid.h"
#include "quant/lut_pack.h"

namespace primal {
namespace {

// Lower Cholesky factor of A (n x n, row-major, symmetric positive definite): A = L L^T.
std::vector<double> cholesky_lower(const std::vector<double>& A, int64_t n, const char* what) {
  std::vector<double> L(size_t(n * n), 0.0);
  for (int64_t j = 0; j < n; ++j) {
    double d = A[size_t(j * n + j)];
    for (int64_t k = 0; k < j; ++k) d -= L[size_t(j * n + k)] * L[size_t(j * n + k)];
    PRIMAL_CHECK(d > 0 && std::isfinite(d), "GPTQ: {} is not positive definite (pivot {} of {})", what, j, n);
    const double ljj = std::sqrt(d);
    L[size_t(j * n + j)] = ljj;
#pragma omp parallel for schedule(static) if (n - j > 256)
    for (int64_t i = j + 1; i < n; ++i) {
      double s = A[size_t(i * n + j)];
      for (int64_t k = 0; k < j; ++k) s -= L[size_t(i * n + k)] * L[size_t(j * n + k)];
      L[size_t(i * n + j)] = s / ljj;
    }
  }
  return L;
}

}  // namespace

std::vector<double> gptq_inverse_factor(const std::vector<double>& H, int64_t n, double damp) {
  PRIMAL_CHECK(int64_t(H.size()) == n * n, "GPTQ: H holds {} values, expected {} x {}", H.size(), n, n);
  double mean_diag = 0;
  for (int64_t i = 0; i < n; ++i) mean_diag += H[size_t(i * n + i)];
  mean_diag /= double(n);
  std::vector<double> Hd = H;
  // Damping keeps H invertible when inputs are rare or correlated; a dead input (never active)
  // gets the damping alone, so its column is quantized without compensation.
  const double add = damp * (mean_diag > 0 ? mean_diag : 1.0);
  for (int64_t i = 0; i < n; ++i) Hd[size_t(i * n + i)] += add;
  const std::vector<double> L = cholesky_lower(Hd, n, "H");
  // Linv = L^-1 (lower), by forward substitution column by column.
  std::vector<double> Li(size_t(n * n), 0.0);
#pragma omp parallel for schedule(dynamic, 8)
  for (int64_t c = 0; c < n; ++c) {
    Li[size_t(c * n + c)] = 1.0 / L[size_t(c * n + c)];
    for (int64_t i = c + 1; i < n; ++i) {
      double s = 0;
      for (int64_t k = c; k < i; ++k) s += L[size_t(i * n + k)] * Li[size_t(k * n + c)];
      Li[size_t(i * n + c)] = -s / L[size_t(i * n + i)];
    }
  }
  // H^-1 = Linv^T Linv.
  std::vector<double> Hi(size_t(n * n), 0.0);
#pragma omp parallel for schedule(dynamic, 8)
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i; j < n; ++j) {
      double s = 0;
      for (int64_t k = j; k < n; ++k) s += Li[size_t(k * n + i)] * Li[size_t(k * n + j)];
      Hi[size_t(i * n + j)] = Hi[size_t(j * n + i)] = s;
    }
  // U = upper factor with H^-1 = U^T U (what GPTQ's recursion reads row by row): the transpose
  // of the lower Cholesky factor C of H^-1 = C C^T.
  const std::vector<double> C = cholesky_lower(Hi, n, "H^-1");
  std::vector<double> U(size_t(n * n), 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i; j < n; ++j) U[size_t(i * n + j)] = C[size_t(j * n + i)];
  return U;
}

LutMatrix lut_quantize_matrix_gptq(const float* W, int64_t ne0, int64_t ne1, DType t, int64_t group,
                                   std::vector<float> grid, const std::vector<double>& H) {
  LutMatrix m = lut_matrix_shell(ne0, ne1, t, group, std::move(grid));
  const std::vector<double> U = gptq_inverse_factor(H, ne0);
  std::vector<float> imp(static_cast<size_t>(ne0));
  for (int64_t i = 0; i < ne0; ++i) imp[size_t(i)] = float(H[size_t(i * ne0 + i)]);
  const LutGrid g(m.grid);
  const int64_t ng = ne0 / group;
#pragma omp parallel
  {
    std::vector<double> w(static_cast<size_t>(ne0));
    std::vector<float> xs(static_cast<size_t>(group));
    std::vector<uint16_t> tmp(static_cast<size_t>(group));
#pragma omp for schedule(dynamic, 16)
    for (int64_t r = 0; r < ne1; ++r) {
      for (int64_t i = 0; i < ne0; ++i) w[size_t(i)] = W[r * ne0 + i];
      uint16_t* idx = m.idx.data() + r * ne0;
      for (int64_t k = 0; k < ng; ++k) {
        const int64_t j0 = k * group;
        for (int64_t j = 0; j < group; ++j) xs[size_t(j)] = float(w[size_t(j0 + j)]);
        uint16_t& scale = m.scale[size_t(r * ng + k)];
        lut_quantize_group(g, xs.data(), imp.data() + j0, group, tmp.data(), &scale);
        const float s = f16_to_f32(scale);
        const float inv = s != 0 ? 1.0f / s : 0.0f;
        for (int64_t j = j0; j < j0 + group; ++j) {
          const uint16_t q = s != 0 ? g.nearest(float(w[size_t(j)]) * inv) : g.nearest_zero();
          idx[j] = q;
          const double e = (w[size_t(j)] - double(s * g[q])) / U[size_t(j * ne0 + j)];
          const double* u = U.data() + j * ne0;
          for (int64_t c = j + 1; c < ne0; ++c) w[size_t(c)] -= e * u[c];
        }
      }
    }
  }
  m.error = output_error(W, m, H);
  m.energy = output_energy(W, ne0, ne1, H);
  return m;
}

namespace {

// sum over rows r of d_r H d_r^T, d_r = row(r) as given by `diff` (fills ne0 doubles).
template <class Diff>
double quad_form_rows(int64_t ne0, int64_t ne1, const std::vector<double>& H, Diff diff) {
  PRIMAL_CHECK(int64_t(H.size()) == ne0 * ne0, "output error: H holds {} values, expected {} x {}", H.size(), ne0, ne0);
  std::vector<double> row_e(size_t(ne1), 0.0);  // summed in row order below: reproducible totals
#pragma omp parallel
  {
    std::vector<double> d(static_cast<size_t>(ne0));
    std::vector<float> tmp(static_cast<size_t>(ne0));
#pragma omp for schedule(dynamic, 64)
    for (int64_t r = 0; r < ne1; ++r) {
      diff(r, d.data(), tmp.data());
      double e = 0;
      for (int64_t i = 0; i < ne0; ++i) {
        const double* h = H.data() + i * ne0;
        double hi = 0;
        for (int64_t k = 0; k < ne0; ++k) hi += h[k] * d[size_t(k)];
        e += d[size_t(i)] * hi;
      }
      row_e[size_t(r)] = e;
    }
  }
  return std::accumulate(row_e.begin(), row_e.end(), 0.0);
}

}  // namespace

double output_error(const float* W, const LutMatrix& m, const std::vector<double>& H) {
  return quad_form_rows(m.ne0, m.ne1, H, [&](int64_t r, double* d, float* q) {
    m.dequantize_row(r, q);
    for (int64_t i = 0; i < m.ne0; ++i) d[i] = double(W[r * m.ne0 + i]) - q[i];
  });
}

double output_energy(const float* W, int64_t ne0, int64_t ne1, const std::vector<double>& H) {
  return quad_form_rows(ne0, ne1, H, [&](int64_t r, double* d, float*) {
    for (int64_t i = 0; i < ne0; ++i) d[i] = W[r * ne0 + i];
  });
}

}  // namespace primal
