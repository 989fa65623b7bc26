// Device and pinned host memory with RAII, streams and events, behind a header that host code
// compiled without nvcc can include (cudaStream_t is declared exactly as cuda_runtime.h does).
#pragma once
#include <cstddef>
#include <cstdint>
#include <utility>

typedef struct CUstream_st* cudaStream_t;
typedef struct CUevent_st* cudaEvent_t;

namespace primal::cuda {

// cudaMalloc'd bytes, freed on destruction. Moves, never copies.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes);  // throws Error when the device has not that much free
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return p_; }
  template <class T>
  T* as() const { return static_cast<T*>(p_); }
  size_t size() const { return n_; }

 private:
  void* p_ = nullptr;
  size_t n_ = 0;
};

// Page-locked host memory (fast, truly asynchronous copies).
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  explicit PinnedBuffer(size_t bytes);
  ~PinnedBuffer();
  PinnedBuffer(PinnedBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  PinnedBuffer& operator=(PinnedBuffer&& o) noexcept;
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;

  void* data() const { return p_; }
  template <class T>
  T* as() const { return static_cast<T*>(p_); }
  size_t size() const { return n_; }

 private:
  void* p_ = nullptr;
  size_t n_ = 0;
};

class Stream {
 public:
  Stream();  // non-blocking with respect to the legacy default stream
  // With a scheduling priority: high (the device's greatest) or not (its least, the default). The
  // block scheduler starts a high-priority stream's pending blocks first.
  explicit Stream(bool high_priority);
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return s_; }
  void sync() const;
  static void sync_stream(cudaStream_t s);  // throws on failure

 private:
  cudaStream_t s_ = nullptr;
};

class Event {
 public:
  Event();
  explicit Event(bool timing);  // timing false: an ordering-only event (cheaper to record and wait on)
  ~Event();
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  void record(cudaStream_t s);
  void sync() const;
  void wait_in(cudaStream_t s) const;  // work queued on s after this waits for the event
  cudaEvent_t get() const { return e_; }
  // Milliseconds from `start` to this event (both recorded and complete).
  float ms_since(const Event& start) const;

 private:
  cudaEvent_t e_ = nullptr;
};

// A CUDA graph captured from the work issued to a stream (and to the streams that join it by
// events), and its executable instance. Moves, never copies.
class Graph {
 public:
  Graph() = default;
  ~Graph();
  Graph(Graph&& o) noexcept : graph_(std::exchange(o.graph_, nullptr)), exec_(std::exchange(o.exec_, nullptr)) {}
  Graph& operator=(Graph&& o) noexcept;
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;
  // Starts capturing s (thread-local mode: a call of this thread that cannot be captured fails).
  static void begin_capture(cudaStream_t s);
  // Ends the capture of s and instantiates it; false (the error cleared, nothing kept) when the
  // capture failed or was invalidated.
  bool end_capture(cudaStream_t s);
  void launch(cudaStream_t s) const;
  bool ready() const { return exec_ != nullptr; }

 private:
  void* graph_ = nullptr;  // cudaGraph_t
  void* exec_ = nullptr;   // cudaGraphExec_t
};

// Copies (throw Error on failure). Async ones are ordered on `s`.
void copy_to_device(void* dst, const void* src, size_t bytes);
void copy_to_host(void* dst, const void* src, size_t bytes);
void copy_to_device_async(void* dst, const void* src, size_t bytes, cudaStream_t s);
void copy_to_host_async(void* dst, const void* src, size_t bytes, cudaStream_t s);
void copy_device_async(void* dst, const void* src, size_t bytes, cudaStream_t s);
void fill_bytes_async(void* dst, int value, size_t bytes, cudaStream_t s);
void record_event(cudaEvent_t e, cudaStream_t s);
// Throws the pending asynchronous error, if any (after a synchronization point).
void check_last_error();
// Multiprocessors of the current device.
int sm_count();
// Free and total device memory in bytes.
std::pair<size_t, size_t> memory_info();

}  // namespace primal::cuda
