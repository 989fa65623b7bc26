// Helpers of the GPU conformance tests: device copies of host vectors, random data, quantized
// weights with their CPU dequantization, and the error measures with their derivations.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "core/error.h"
#include "core/half.h"
#include "core/tensor_ref.h"
#include "ops/cuda/buffer.h"
#include "ops/cuda/device.h"
#include "ops/cuda/matrix.h"
#include "quant/dequant.h"

namespace gputest {

using namespace primal;

constexpr double kU = 1.0 / 16777216.0;  // fp32 unit roundoff 2^-24
constexpr double kU16 = 1.0 / 2048.0;    // fp16 unit roundoff 2^-11

// Stops the calling test at once when there is no GPU (a macro: an ASSERT inside a helper
// function would only leave the helper, and the test would go on to fail somewhere else).
#define REQUIRE_GPU() \
  ASSERT_GT(::primal::cuda::device_count(), 0) << "no GPU: run `ctest -L gpu` on the GPU machine"


inline std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

template <class T>
cuda::DeviceBuffer to_device(const std::vector<T>& v) {
  cuda::DeviceBuffer b(std::max<size_t>(v.size() * sizeof(T), 16));
  if (!v.empty()) cuda::copy_to_device(b.data(), v.data(), v.size() * sizeof(T));
  return b;
}

template <class T>
std::vector<T> to_host(const cuda::DeviceBuffer& b, size_t n) {
  std::vector<T> v(n);
  cuda::copy_to_host(v.data(), b.data(), n * sizeof(T));
  return v;
}

// A device buffer of n floats filled with NaN, so that an element the kernel fails to write shows.
inline cuda::DeviceBuffer poisoned(size_t n) {
  return to_device(std::vector<float>(n, std::numeric_limits<float>::quiet_NaN()));
}

// A weight (O rows of I) of `type` quantized from normal values, its CPU dequantization and its
// device upload.
struct Weight {
  std::vector<uint8_t> bytes;
  TensorRef ref;
  std::vector<float> deq;  // (O, I)
  cuda::DeviceMatrix dev;
};

inline Weight make_weight(DType type, int64_t O, int64_t I, uint32_t seed, float scale = 0.5f) {
  Weight w;
  const auto src = randn(size_t(O * I), seed, scale);
  w.bytes.resize(row_bytes(type, I) * size_t(O));
  quantize_rows(type, src.data(), w.bytes.data(), O, I);
  w.ref = TensorRef{"test.weight", type, {I, O}, w.bytes.data(), w.bytes.size()};
  w.deq.resize(size_t(O * I));
  dequantize_tensor(w.ref, w.deq.data());
  w.dev = cuda::upload_matrix(w.ref);
  return w;
}

// ||got - want|| / ||want|| (NaN anywhere gives +inf).
inline double rel_err(const std::vector<float>& got, const std::vector<double>& want) {
  double e = 0, n = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    e += (got[i] - want[i]) * (got[i] - want[i]);
    n += want[i] * want[i];
  }
  return n > 0 ? std::sqrt(e / n) : std::sqrt(e);
}

// Norm-relative tolerance of fp32 sums of n terms: rounding errors of random sign grow like
// sqrt(n) u (the worst case n u is checked element by element where it matters); 4x margin.
inline double fp32_sum_tol(int64_t n) { return 4.0 * std::sqrt(double(n) + 1) * kU; }

}  // namespace gputest
