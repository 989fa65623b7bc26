// The bf16 trainer's per-shape GEMM algorithm choice (gemm_tune.h).
#include <cublasLt.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <tuple>

#include "ops/cuda/buffer.h"
#include "ops/cuda/check.cuh"
#include "ops/cuda/gemm.h"
#include "ops/cuda/gemm_tune.h"

namespace primal::cuda {

namespace {

void check_lt(cublasStatus_t st, const char* what) {
  if (st != CUBLAS_STATUS_SUCCESS) fail("cuBLASLt {} failed: {}", what, cublasGetStatusString(st));
}

constexpr int kCandidates = 8;       // the heuristic's top algorithms (it offers 8 for these shapes)
constexpr int kRounds = 3, kReps = 3;  // interleaved rounds of kReps launches; the best round counts

// The alignment (bytes, a power of two up to 256) of a pointer: part of a shape's key, as the
// algorithms cuBLASLt offers depend on it.
int64_t alignment(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  int64_t al = 256;
  while (al > 1 && a % uintptr_t(al) != 0) al /= 2;
  return al;
}

using Key = std::tuple<int, int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int, int, int64_t, int64_t,
                       int64_t>;

Key key_of(const GemmCall& g) {
  return {int(g.ta), int(g.tb), g.m, g.n, g.k, g.lda, g.ldb, g.ldc, int(g.ab), int(g.c),
          alignment(g.A), alignment(g.B), alignment(g.C)};
}

}  // namespace

// A kept cuBLASLt algorithm with the descriptors it was chosen for.
struct TunedGemm {
  bool lt = false;  // false: cublasGemmEx kept
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

struct GemmTuner {
  cublasLtHandle_t lt = nullptr;
  bool verbose = false;
  float margin = 0.97f;  // Blas::set_tuning
  std::map<Key, TunedGemm> kept;
  GemmTuneStats stats;

  ~GemmTuner() {
    for (auto& [k, t] : kept) release(t);
    if (lt) cublasLtDestroy(lt);
  }
  static void release(TunedGemm& t) {
    if (t.la) cublasLtMatrixLayoutDestroy(t.la);
    if (t.lb) cublasLtMatrixLayoutDestroy(t.lb);
    if (t.lc) cublasLtMatrixLayoutDestroy(t.lc);
    if (t.op) cublasLtMatmulDescDestroy(t.op);
    t = TunedGemm{};
  }
};

void GemmTunerDeleter::operator()(GemmTuner* t) const { delete t; }

void Blas::set_tuning(bool on, bool verbose, float margin) {
  if (!on) {
    tuner_.reset();
    return;
  }
  if (!tuner_) {
    auto t = std::unique_ptr<GemmTuner, GemmTunerDeleter>(new GemmTuner);
    check_lt(cublasLtCreate(&t->lt), "create");
    tuner_ = std::move(t);
  }
  tuner_->verbose = verbose;
  tuner_->margin = margin;
}

GemmTuneStats gemm_tune_stats(const Blas& blas) { return blas.tuner() ? blas.tuner()->stats : GemmTuneStats{}; }

namespace {

cublasStatus_t run_lt(Blas& blas, const TunedGemm& t, const GemmCall& g, cudaStream_t s) {
  const float alpha = 1.0f;
  return cublasLtMatmul(blas.tuner()->lt, t.op, &alpha, g.A, t.la, g.B, t.lb, &g.beta, g.C, t.lc, g.C, t.lc, &t.algo,
                        blas.workspace(), blas.workspace_bytes(), s);
}

// cublasGemmEx's own choice (the untuned call, and the time tuning compares against).
cublasStatus_t run_ex(Blas& blas, const GemmCall& g, cudaStream_t s) {
  cublasHandle_t h = static_cast<cublasHandle_t>(blas.handle());
  if (const cublasStatus_t st = cublasSetStream(h, s); st != CUBLAS_STATUS_SUCCESS) return st;
  const float alpha = 1.0f;
  return cublasGemmEx(h, g.ta, g.tb, int(g.m), int(g.n), int(g.k), &alpha, g.A, g.ab, int(g.lda), g.B, g.ab,
                      int(g.ldb), &g.beta, g.C, g.c, int(g.ldc), g.ct, CUBLAS_GEMM_DEFAULT);
}

// One timing round of f: best becomes the smaller of itself and this round's microseconds per
// launch (the caller interleaves the candidates' rounds); a launch that fails makes it infinite.
template <class F>
void time_round(F&& f, cudaStream_t s, Event& a, Event& b, float& best) {
  if (f() != CUBLAS_STATUS_SUCCESS) {  // (warm-up, and a test that it runs at all)
    best = 1e30f;
    return;
  }
  a.record(s);
  for (int r = 0; r < kReps; ++r) f();
  b.record(s);
  b.sync();
  best = std::min(best, b.ms_since(a) * 1000.0f / kReps);
}

TunedGemm tune(Blas& blas, const GemmCall& g, cudaStream_t s) {
  GemmTuner& tu = *blas.tuner();
  TunedGemm t;
  check_lt(cublasLtMatmulDescCreate(&t.op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "desc");
  check_lt(cublasLtMatmulDescSetAttribute(t.op, CUBLASLT_MATMUL_DESC_TRANSA, &g.ta, sizeof(g.ta)), "trans a");
  check_lt(cublasLtMatmulDescSetAttribute(t.op, CUBLASLT_MATMUL_DESC_TRANSB, &g.tb, sizeof(g.tb)), "trans b");
  const bool an = g.ta == CUBLAS_OP_N, bn = g.tb == CUBLAS_OP_N;
  check_lt(cublasLtMatrixLayoutCreate(&t.la, g.ab, an ? g.m : g.k, an ? g.k : g.m, g.lda), "layout a");
  check_lt(cublasLtMatrixLayoutCreate(&t.lb, g.ab, bn ? g.k : g.n, bn ? g.n : g.k, g.ldb), "layout b");
  check_lt(cublasLtMatrixLayoutCreate(&t.lc, g.c, g.m, g.n, g.ldc), "layout c");
  cublasLtMatmulPreference_t pref = nullptr;
  check_lt(cublasLtMatmulPreferenceCreate(&pref), "preference");
  const size_t ws = blas.workspace_bytes();
  const uint32_t al[3] = {uint32_t(alignment(g.A)), uint32_t(alignment(g.B)), uint32_t(alignment(g.C))};
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al[0], 4);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al[1], 4);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al[2], 4);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al[2], 4);
  cublasLtMatmulHeuristicResult_t res[kCandidates];
  int n = 0;
  if (cublasLtMatmulAlgoGetHeuristic(tu.lt, t.op, t.la, t.lb, t.lc, t.lc, pref, kCandidates, res, &n) !=
      CUBLAS_STATUS_SUCCESS)
    n = 0;
  cublasLtMatmulPreferenceDestroy(pref);
  Event a(true), b(true);
  float ex = 1e30f, lt[kCandidates];
  std::fill(lt, lt + kCandidates, 1e30f);
  for (int r = 0; r < kRounds; ++r) {
    time_round([&] { return run_ex(blas, g, s); }, s, a, b, ex);
    for (int i = 0; i < n; ++i) {
      if (res[i].state != CUBLAS_STATUS_SUCCESS || res[i].workspaceSize > ws) continue;
      t.algo = res[i].algo;
      time_round([&] { return run_lt(blas, t, g, s); }, s, a, b, lt[i]);
    }
  }
  const int best = int(std::min_element(lt, lt + std::max(n, 1)) - lt);
  t.lt = n > 0 && lt[best] < 1e30f && lt[best] <= tu.margin * ex;
  if (tu.verbose)
    std::fprintf(stderr, "gemm tune: %c%c m %lld n %lld k %lld -> %s (%.1f us, cublasGemmEx %.1f us, %d candidates)\n",
                 g.ta == CUBLAS_OP_N ? 'N' : 'T', g.tb == CUBLAS_OP_N ? 'N' : 'T', (long long)g.m, (long long)g.n,
                 (long long)g.k, t.lt ? "cuBLASLt" : "cublasGemmEx", double(t.lt ? lt[best] : ex), double(ex), n);
  if (t.lt) t.algo = res[best].algo;
  else GemmTuner::release(t);
  return t;
}

}  // namespace

bool gemm_tuned(Blas& blas, const GemmCall& g, cudaStream_t s) {
  GemmTuner* tu = blas.tuner();
  if (!tu || g.ab != CUDA_R_16BF || g.ct != CUBLAS_COMPUTE_32F) return false;
  const Key key = key_of(g);
  auto it = tu->kept.find(key);
  if (it == tu->kept.end()) {
    cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
    PRIMAL_CUDA_CHECK(cudaStreamIsCapturing(s, &cap));
    if (g.beta != 0.0f || cap != cudaStreamCaptureStatusNone) return false;
    it = tu->kept.emplace(key, tune(blas, g, s)).first;
    ++tu->stats.shapes;
    tu->stats.lt += it->second.lt;
  }
  if (!it->second.lt) return false;
  check_lt(run_lt(blas, it->second, g, s), "matmul");
  ++tu->stats.lt_calls;
  return true;
}

void gemm_run(Blas& blas, const GemmCall& g, cudaStream_t s, const char* what) {
  if (gemm_tuned(blas, g, s)) return;
  const cublasStatus_t st = run_ex(blas, g, s);
  if (st != CUBLAS_STATUS_SUCCESS) fail("cuBLAS {} failed: {}", what, cublasGetStatusString(st));
}

}  // namespace primal::cuda
