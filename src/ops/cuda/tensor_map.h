// Tensor maps for Hopper's bulk tensor copies (TMA), encoded through the driver's
// cuTensorMapEncodeTiled (found at run time: the runtime library alone is linked), and whether
// the kernels that use them can run here.
#pragma once
#include <cuda.h>

#include <cstdint>

namespace primal::cuda {

// Whether the driver exports the encoder (a driver older than CUDA 12 does not).
bool tensor_map_encoder_found();

// Whether this process can run a Hopper kernel built for sm_90a alone (`kernel`: its host stub):
// the current device has compute capability 9.0, the kernel's image loads, and the encoder is found.
bool sm90a_kernel_available(const void* kernel);

// A 2-D map over a (rows, cols) row-major matrix of `type`, rows row_bytes apart (a multiple of
// 16), read in boxes of box_cols x box_rows with the given swizzle; reads past the matrix fill
// zeros. Throws naming `what` where the driver refuses it.
CUtensorMap tensor_map_2d(CUtensorMapDataType type, const void* base, int64_t rows, int64_t cols, int64_t row_bytes,
                          uint32_t box_cols, uint32_t box_rows, CUtensorMapSwizzle swizzle, const char* what);

}  // namespace primal::cuda
