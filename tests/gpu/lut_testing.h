// What the LUT-trainer GPU tests share: a train::LutWeight's indices, scales and grid copied to
// the device, with the kernels' view of them.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "gpu_testing.h"
#include "ops/cuda/lut_train.h"
#include "train/lut_weight.h"

namespace gputest {

struct DevLut {
  cuda::DeviceBuffer idx, scale, grid;
  cuda::LutTrainView view;
};

inline DevLut upload(const train::LutWeight& L) {
  DevLut d;
  d.idx = to_device(L.idx);
  d.scale = to_device(L.scale);
  d.grid = to_device(L.grid);
  d.view.type = L.type;
  d.view.O = L.O, d.view.I = L.I, d.view.G = L.G;
  d.view.idx = d.idx.as<uint8_t>();
  d.view.scale = d.scale.as<float>();
  d.view.grid = d.grid.as<float>();
  return d;
}

// The weight gradient in fp64, dW (O, I) = dout^T inp (dout (N, O) rows ld apart, inp (N, I)), and
// per weight the sum of its products' magnitudes (what rounding errors scale with).
struct ExactGrad {
  std::vector<double> dW, mag;
};
inline ExactGrad exact_weight_grad(const float* dout, int64_t ld, const float* inp, int64_t N, int64_t O, int64_t I) {
  ExactGrad e{std::vector<double>(size_t(O * I)), std::vector<double>(size_t(O * I))};
  for (int64_t o = 0; o < O; ++o)
    for (int64_t i = 0; i < I; ++i) {
      double s = 0, a = 0;
      for (int64_t t = 0; t < N; ++t) {
        const double p = double(dout[size_t(t * ld + o)]) * inp[size_t(t * I + i)];
        s += p, a += std::fabs(p);
      }
      e.dW[size_t(o * I + i)] = s, e.mag[size_t(o * I + i)] = a;
    }
  return e;
}

}  // namespace gputest
