#include "ops/cuda/buffer.h"
#include "ops/cuda/check.cuh"

namespace primal::cuda {

DeviceBuffer::DeviceBuffer(size_t bytes) : n_(bytes) {
  if (bytes == 0) return;
  const cudaError_t e = cudaMalloc(&p_, bytes);
  if (e != cudaSuccess) {
    cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    fail("cannot allocate {:.1f} MiB on the GPU ({:.1f} MiB free of {:.1f} MiB): {}", double(bytes) / 1048576.0,
         double(free_b) / 1048576.0, double(total_b) / 1048576.0, cudaGetErrorString(e));
  }
}

DeviceBuffer::~DeviceBuffer() {
  if (p_) cudaFree(p_);
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (p_) cudaFree(p_);
    p_ = std::exchange(o.p_, nullptr);
    n_ = std::exchange(o.n_, 0);
  }
  return *this;
}

PinnedBuffer::PinnedBuffer(size_t bytes) : n_(bytes) {
  if (bytes) PRIMAL_CUDA_CHECK(cudaMallocHost(&p_, bytes));
}

PinnedBuffer::~PinnedBuffer() {
  if (p_) cudaFreeHost(p_);
}

PinnedBuffer& PinnedBuffer::operator=(PinnedBuffer&& o) noexcept {
  if (this != &o) {
    if (p_) cudaFreeHost(p_);
    p_ = std::exchange(o.p_, nullptr);
    n_ = std::exchange(o.n_, 0);
  }
  return *this;
}

Stream::Stream() { PRIMAL_CUDA_CHECK(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking)); }
Stream::Stream(bool high_priority) {
  int least = 0, greatest = 0;
  PRIMAL_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  PRIMAL_CUDA_CHECK(cudaStreamCreateWithPriority(&s_, cudaStreamNonBlocking, high_priority ? greatest : least));
}
Stream::~Stream() {
  if (s_) cudaStreamDestroy(s_);
}
void Stream::sync() const { sync_stream(s_); }
void Stream::sync_stream(cudaStream_t s) { PRIMAL_CUDA_CHECK(cudaStreamSynchronize(s)); }

Event::Event() { PRIMAL_CUDA_CHECK(cudaEventCreate(&e_)); }
Event::Event(bool timing) {
  PRIMAL_CUDA_CHECK(cudaEventCreateWithFlags(&e_, timing ? cudaEventDefault : cudaEventDisableTiming));
}
Event::~Event() {
  if (e_) cudaEventDestroy(e_);
}
void Event::record(cudaStream_t s) { PRIMAL_CUDA_CHECK(cudaEventRecord(e_, s)); }
void Event::sync() const { PRIMAL_CUDA_CHECK(cudaEventSynchronize(e_)); }
void Event::wait_in(cudaStream_t s) const { PRIMAL_CUDA_CHECK(cudaStreamWaitEvent(s, e_, 0)); }
float Event::ms_since(const Event& start) const {
  float ms = 0;
  PRIMAL_CUDA_CHECK(cudaEventElapsedTime(&ms, start.e_, e_));
  return ms;
}

Graph::~Graph() {
  if (exec_) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec_));
  if (graph_) cudaGraphDestroy(static_cast<cudaGraph_t>(graph_));
}
Graph& Graph::operator=(Graph&& o) noexcept {
  if (this != &o) {
    this->~Graph();
    graph_ = std::exchange(o.graph_, nullptr);
    exec_ = std::exchange(o.exec_, nullptr);
  }
  return *this;
}
void Graph::begin_capture(cudaStream_t s) {
  PRIMAL_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
}
bool Graph::end_capture(cudaStream_t s) {
  cudaGraph_t g = nullptr;
  const cudaError_t e = cudaStreamEndCapture(s, &g);
  if (e != cudaSuccess || !g) {
    if (g) cudaGraphDestroy(g);
    cudaGetLastError();
    return false;
  }
  cudaGraphExec_t x = nullptr;
  if (cudaGraphInstantiate(&x, g, 0) != cudaSuccess) {
    cudaGraphDestroy(g);
    cudaGetLastError();
    return false;
  }
  *this = Graph();
  graph_ = g, exec_ = x;
  return true;
}
void Graph::launch(cudaStream_t s) const {
  PRIMAL_CHECK(exec_, "Graph::launch: nothing captured");
  PRIMAL_CUDA_CHECK(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec_), s));
}

void copy_to_device(void* dst, const void* src, size_t bytes) {
  PRIMAL_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}
void copy_to_host(void* dst, const void* src, size_t bytes) {
  PRIMAL_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}
void copy_to_device_async(void* dst, const void* src, size_t bytes, cudaStream_t s) {
  PRIMAL_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s));
}
void copy_to_host_async(void* dst, const void* src, size_t bytes, cudaStream_t s) {
  PRIMAL_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s));
}
void copy_device_async(void* dst, const void* src, size_t bytes, cudaStream_t s) {
  PRIMAL_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, s));
}
void fill_bytes_async(void* dst, int value, size_t bytes, cudaStream_t s) {
  PRIMAL_CUDA_CHECK(cudaMemsetAsync(dst, value, bytes, s));
}
void record_event(cudaEvent_t e, cudaStream_t s) { PRIMAL_CUDA_CHECK(cudaEventRecord(e, s)); }
void check_last_error() { PRIMAL_CUDA_CHECK(cudaGetLastError()); }

int sm_count() {
  static const int n = [] {
    int dev = 0, v = 0;
    PRIMAL_CUDA_CHECK(cudaGetDevice(&dev));
    PRIMAL_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev));
    return v;
  }();
  return n;
}

std::pair<size_t, size_t> memory_info() {
  size_t f = 0, t = 0;
  PRIMAL_CUDA_CHECK(cudaMemGetInfo(&f, &t));
  return {f, t};
}

}  // namespace primal::cuda

#include "ops/cuda/launch.cuh"

namespace primal::cuda {

bool& pdl_enabled() {
  thread_local bool on = false;
  return on;
}

}  // namespace primal::cuda
