// Row-major GEMM for the training ops, in fp32 (training) or fp64 (finite-difference tests):
//   C (M, N) = alpha * op(A) * op(B) + beta * C
// op(A) is A (M, K) or, with trans_a, A^T for A stored (K, M); op(B) is B (K, N) or, with
// trans_b, B^T for B stored (N, K). lda/ldb/ldc are row strides in elements.
// OpenBLAS (single-threaded: callers parallelize over tiles) when built with it, else plain loops.
#pragma once
#include <cstdint>

namespace primal::cpu {

template <class F>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, F alpha, const F* A, int64_t lda, const F* B,
          int64_t ldb, F beta, F* C, int64_t ldc);

}  // namespace primal::cpu
