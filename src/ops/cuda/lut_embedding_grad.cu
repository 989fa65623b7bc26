#include "ops/cuda/lut_embedding_grad.h"

#include "ops/cuda/check.cuh"
#include "ops/cuda/lut_train.cuh"

namespace primal::cuda {
namespace {

// Block b: token rows[b]; thread j: groups j, j + blockDim, ... of that row. With n_dev, blocks at
// or past *n_dev have no row.
template <int B>
__global__ void embd_scale_grad_kernel(const LutTrainView w, const float* dx, const int32_t* rows,
                                       const int32_t* start, const int32_t* pos, int64_t row_bytes, float* dscale,
                                       const int32_t* n_dev) {
  if (n_dev && int32_t(blockIdx.x) >= *n_dev) return;
  const int64_t r = rows[blockIdx.x], ng = w.I / w.G;
  const uint8_t* idx = w.idx + r * row_bytes;
  for (int64_t g = threadIdx.x; g < ng; g += blockDim.x) {
    float ds = dscale[r * ng + g];
    for (int32_t k = start[blockIdx.x]; k < start[blockIdx.x + 1]; ++k) {
      const float* d = dx + int64_t(pos[k]) * w.I;
      float acc = 0.0f;
      for (int64_t i = g * w.G; i < (g + 1) * w.G; ++i)
        acc = __fadd_rn(acc, __fmul_rn(d[i], __ldg(w.grid + lut::get_index<B>(idx, i))));
      ds = __fadd_rn(ds, acc);
    }
    dscale[r * ng + g] = ds;
  }
}

}  // namespace

void lut_embedding_scale_grad(const LutTrainView& w, const float* dx, const int32_t* rows, const int32_t* start,
                              const int32_t* pos, int64_t n_rows, float* dscale, cudaStream_t s,
                              const int32_t* n_rows_dev) {
  check_lut_view(w, "lut_embedding_scale_grad");
  PRIMAL_CHECK(dx && rows && start && pos && dscale, "lut_embedding_scale_grad: a null pointer");
  if (n_rows == 0) return;
  PRIMAL_CHECK(n_rows < (int64_t(1) << 31), "lut_embedding_scale_grad: {} rows", n_rows);
  const int64_t rb = w.row_bytes();
  const int threads = int(std::min<int64_t>(256, ((w.I / w.G) + 31) / 32 * 32));
#define PRIMAL_LAUNCH(B) \
  embd_scale_grad_kernel<B><<<unsigned(n_rows), threads, 0, s>>>(w, dx, rows, start, pos, rb, dscale, n_rows_dev)
  PRIMAL_LUT_BITS_SWITCH(w.bits(), PRIMAL_LAUNCH)
#undef PRIMAL_LAUNCH
  PRIMAL_CUDA_CHECK_LAUNCH();
}

}  // namespace primal::cuda
