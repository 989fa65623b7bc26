// The bf16 trainer's LUT GEMMs at qwen2.5-1.5b's shapes (8 x 1024 tokens, LUT4, 32 weights a
// scale), each called as the engine calls it (ops/cuda/lut_train.h): dequantization into the
// scratch + cuBLAS against the GEMM that dequantizes in its loads (ops/cuda/lut_gemm.h), and, for
// the grouped input gradients, cuBLAS alone on weights already dequantized. Built with the project
// (target lut_gemm_bench), run on the GPU machine: ./lut_gemm_bench [reps]
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "ops/cuda/buffer.h"
#include "ops/cuda/gemm.h"
#include "ops/cuda/lut_gemm.h"
#include "ops/cuda/lut_train.h"
#include "quant/lut_grid.h"

using namespace primal;

namespace {

struct DevMat {
  cuda::DeviceBuffer idx, scale, grid;
  cuda::LutTrainView v;
};

DevMat make_mat(int64_t O, int64_t I, int64_t G, std::mt19937& rng) {
  DevMat m;
  std::vector<uint8_t> idx(size_t(O * I / 2));
  for (auto& b : idx) b = uint8_t(rng());
  std::normal_distribution<float> nd(0.0f, 0.02f);
  std::vector<float> sc(size_t(O * (I / G)));
  for (auto& x : sc) x = nd(rng);
  const std::vector<float> grid = nf4_grid(16);
  m.idx = cuda::DeviceBuffer(idx.size()), m.scale = cuda::DeviceBuffer(sc.size() * 4), m.grid = cuda::DeviceBuffer(64);
  cuda::copy_to_device(m.idx.data(), idx.data(), idx.size());
  cuda::copy_to_device(m.scale.data(), sc.data(), sc.size() * 4);
  cuda::copy_to_device(m.grid.data(), grid.data(), 64);
  m.v.type = DType::LUT4, m.v.O = O, m.v.I = I, m.v.G = G;
  m.v.idx = m.idx.as<uint8_t>(), m.v.scale = m.scale.as<float>(), m.v.grid = m.grid.as<float>();
  return m;
}

cuda::DeviceBuffer bf16_noise(int64_t n, std::mt19937& rng) {
  std::vector<uint16_t> h(static_cast<size_t>(n));
  for (auto& x : h) x = uint16_t(0x3C00 + (rng() & 0x3FF)) ^ uint16_t((rng() & 1) << 15);  // +-[2^-7, 2^-6)
  cuda::DeviceBuffer d(h.size() * 2);
  cuda::copy_to_device(d.data(), h.data(), h.size() * 2);
  return d;
}

double time_us(const std::function<void()>& f, int reps) {
  for (int r = 0; r < 3; ++r) f();
  cudaEvent_t a, b;
  cudaEventCreate(&a), cudaEventCreate(&b);
  cudaEventRecord(a);
  for (int r = 0; r < reps; ++r) f();
  cudaEventRecord(b);
  cudaEventSynchronize(b);
  float ms = 0;
  cudaEventElapsedTime(&ms, a, b);
  cudaEventDestroy(a), cudaEventDestroy(b);
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) std::fprintf(stderr, "CUDA error %s\n", cudaGetErrorString(e)), std::exit(1);
  return 1e3 * ms / reps;
}

}  // namespace

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::atoi(argv[1]) : 20;
  if (!cuda::lut_gemm_available()) return std::puts("lut_gemm: needs a compute capability 9.0 device"), 1;
  const int64_t N = 8192, D = 1536, F = 8960, KV = 256, G = 32, V = 151936, NH = 2048;
  std::mt19937 rng(7);
  DevMat q = make_mat(D, D, G, rng), k = make_mat(KV, D, G, rng), v = make_mat(KV, D, G, rng), o = make_mat(D, D, G, rng);
  DevMat gate = make_mat(F, D, G, rng), up = make_mat(F, D, G, rng), down = make_mat(D, F, G, rng);
  DevMat head = make_mat(V, D, G, rng);
  cuda::DeviceBuffer x = bf16_noise(N * F, rng), dy = bf16_noise(N * 2 * F, rng);
  cuda::DeviceBuffer y32(size_t(N * 2 * F) * 4), y16(size_t(N * 2 * F) * 2), yh(size_t(NH * V) * 2);
  const int64_t scratch_floats = V * D / 2;
  cuda::DeviceBuffer scratch(size_t(scratch_floats) * 4);
  cuda::set_train_math(cuda::TrainMath::Bf16);
  cuda::Blas blas;
  float* sc = scratch.as<float>();
  const uint16_t* xb = x.as<uint16_t>();
  const uint16_t* db = dy.as<uint16_t>();
  auto* y16p = y16.as<uint16_t>();
  float* y32p = y32.as<float>();

  struct Shape {
    std::string name;
    double flop;
    std::function<void()> call;
    std::function<void()> gemm_only;  // cuBLAS on the weights the call left dequantized (or null)
  };
  const cuda::LutTrainView qkv[3] = {q.v, k.v, v.v}, gu[2] = {gate.v, up.v};
  std::vector<Shape> shapes = {
      {"fwd q|k|v (fp32, stacked)", 2.0 * N * 2048 * D,
       [&] {
         cuda::LutGroupOut out[3] = {{y32p, nullptr, nullptr}, {y32p + D, nullptr, nullptr}, {y32p + D + KV, nullptr, nullptr}};
         cuda::lut_linear_forward_group(blas, qkv, out, 3, xb, N, sc, scratch_floats, nullptr, 2048);
       },
       nullptr},
      {"fwd o (bf16)", 2.0 * N * D * D,
       [&] { cuda::lut_linear_forward_bf16_out(blas, o.v, xb, N, y16p, sc, scratch_floats, nullptr); }, nullptr},
      {"fwd gate, up (bf16)", 2.0 * N * 2 * F * D,
       [&] {
         cuda::LutGroupOut out[2] = {{nullptr, y16p, nullptr}, {nullptr, y16p + N * F, nullptr}};
         cuda::lut_linear_forward_group(blas, gu, out, 2, xb, N, sc, scratch_floats, nullptr);
       },
       nullptr},
      {"fwd down (bf16)", 2.0 * N * D * F,
       [&] { cuda::lut_linear_forward_bf16_out(blas, down.v, xb, N, y16p, sc, scratch_floats, nullptr); }, nullptr},
      {"fwd head chunk 2048 (bf16)", 2.0 * NH * V * D,
       [&] { cuda::lut_linear_forward_bf16_out(blas, head.v, xb, NH, yh.as<uint16_t>(), sc, scratch_floats, nullptr); },
       nullptr},
      {"dinp down (bf16)", 2.0 * N * D * F,
       [&] { cuda::lut_linear_backward_input_bf16_out(blas, down.v, db, N, y16p, sc, scratch_floats, nullptr); },
       nullptr},
      {"dinp gate+up (fp32, stacked)", 2.0 * N * 2 * F * D,
       [&] {
         const uint16_t* d[2] = {db, db + F};
         cuda::lut_linear_backward_input_group(blas, gu, d, 2, N, y32p, false, sc, scratch_floats, nullptr, 2 * F);
       },
       [&] {
         const uint16_t* d[2] = {db, db + F};
         cuda::lut_linear_backward_input_group(blas, gu, d, 2, N, y32p, false, sc, scratch_floats, nullptr, 2 * F, true);
       }},
      {"dinp o (bf16)", 2.0 * N * D * D,
       [&] { cuda::lut_linear_backward_input_bf16_out(blas, o.v, db, N, y16p, sc, scratch_floats, nullptr); }, nullptr},
      {"dinp q|k|v (fp32, stacked)", 2.0 * N * 2048 * D,
       [&] {
         const uint16_t* d[3] = {db, db + D, db + D + KV};
         cuda::lut_linear_backward_input_group(blas, qkv, d, 3, N, y32p, false, sc, scratch_floats, nullptr, 2048);
       },
       [&] {
         const uint16_t* d[3] = {db, db + D, db + D + KV};
         cuda::lut_linear_backward_input_group(blas, qkv, d, 3, N, y32p, false, sc, scratch_floats, nullptr, 2048, true);
       }},
  };
  std::printf("%-30s %12s %12s %12s %8s\n", "shape", "cuBLAS+deq", "cuBLAS only", "fused", "fused/");
  double tot_u = 0, tot_f = 0;
  for (const Shape& s : shapes) {
    cuda::set_fused_dequant(false);
    const double u = time_us(s.call, reps);
    const double g = s.gemm_only ? time_us(s.gemm_only, reps) : 0.0;
    cuda::set_fused_dequant(true);
    const double f = time_us(s.call, reps);
    tot_u += u, tot_f += f;
    auto tf = [&](double us) { return s.flop / us * 1e-6; };
    std::printf("%-30s %6.1f us %4.0fT %6.1f us %4.0fT %6.1f us %4.0fT %7.3f\n", s.name.c_str(), u, tf(u), g,
                g > 0 ? tf(g) : 0.0, f, tf(f), f / u);
  }
  std::printf("%-30s %6.1f us       %19s %6.1f us       %7.3f\n", "all", tot_u, "", tot_f, tot_f / tot_u);
  return 0;
}
