// --device cpu|cuda for the commands that run a model: the backend to run it on. The default is
// cuda when the binary was built with CUDA and a GPU is present, cpu otherwise.
#pragma once
#include <CLI/CLI.hpp>

#include <memory>
#include <string>

#include "core/error.h"
#include "infer/backend.h"
#ifdef PRIMAL_HAVE_CUDA
#include "infer/cuda/cuda_backend.h"
#include "ops/cuda/device.h"
#endif

namespace primal::cli {

inline void add_device_option(CLI::App* cmd, std::string& device) {
  cmd->add_option("--device", device, "Where to run: cpu or cuda (default: cuda when a GPU is present)")
      ->check(CLI::IsMember({"", "cpu", "cuda"}));
}

// "cpu" or "cuda" for the option's value ("" = the default).
inline std::string resolve_device(const std::string& device) {
  if (!device.empty()) return device;
#ifdef PRIMAL_HAVE_CUDA
  if (cuda::device_count() > 0) return "cuda";
#endif
  return "cpu";
}

// The backend for `w` (which must outlive it) with a context of n_ctx tokens.
inline std::unique_ptr<Backend> make_backend(const LlamaWeights& w, int64_t n_ctx, const std::string& device,
                                             int64_t max_batch = 512) {
  const std::string d = resolve_device(device);
  if (d == "cpu") return make_cpu_backend(w, n_ctx);
#ifdef PRIMAL_HAVE_CUDA
  cuda::CudaOptions o;
  o.max_batch = max_batch;
  return cuda::make_cuda_backend(w, n_ctx, o);
#else
  (void)max_batch;
  fail("--device cuda: this primal was built without CUDA");
#endif
}

}  // namespace primal::cli
