#include <gtest/gtest.h>

#include <vector>

#include "ops/cuda/device.h"

TEST(GpuDevice, SaxpyMatchesCpu) {
  ASSERT_GT(primal::cuda::device_count(), 0) << "no GPU: run `ctest -L gpu` on the GPU machine";
  const int n = 1000003;  // not a multiple of the block size
  std::vector<float> x(n), y(n), ref(n);
  for (int i = 0; i < n; ++i) {
    x[i] = float(i % 97) * 0.5f - 3.0f;
    y[i] = float(i % 13) - 6.0f;
    ref[i] = 1.5f * x[i] + y[i];
  }
  primal::cuda::saxpy_host(n, 1.5f, x.data(), y.data());
  for (int i = 0; i < n; ++i) ASSERT_EQ(y[i], ref[i]) << i;  // one fma or mul+add: exact for these values
}
