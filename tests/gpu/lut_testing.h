// What the LUT-trainer GPU tests share: a train::LutWeight's indices, scales and grid copied to
// the device, with the kernels' view of them.
#pragma once
#include <cstdint>

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

}  // namespace gputest
