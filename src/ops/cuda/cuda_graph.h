// A CUDA graph of work queued on the ops stream: capture() records what a body function launches (nothing
// runs), launch() replays it. For the decode step, whose ~400 small launches cost more host time than
// GPU time at batch 1. Capture fails (returns false, the error cleared) when the body does something a
// graph cannot hold, e.g. a synchronising call; the caller then keeps launching eagerly.
// Declared only in CUDA builds.
#pragma once
#ifdef QTUNE_HAVE_CUDA
#include <cstddef>
#include <functional>
#include <string>

namespace qtune {
namespace cuda {

class CudaGraph {
 public:
  CudaGraph() = default;
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;
  ~CudaGraph();

  // Records body's launches on the ops stream. false (and why in error()) when capture failed.
  bool capture(const std::function<void()>& body);
  bool ready() const { return exec_ != nullptr; }
  const std::string& error() const { return error_; }
  // Queues the whole graph on the ops stream (throws ErrorKind::Cuda on failure).
  void launch();

 private:
  void* graph_ = nullptr;  // cudaGraph_t
  void* exec_ = nullptr;   // cudaGraphExec_t
  std::string error_;
};

// Queues a host → device copy of `bytes` on the ops stream (stream-ordered with the kernels).
void copy_to_device_async(void* dst, const void* src, size_t bytes);
// Queues a device → device copy of `bytes` on the ops stream.
void copy_device_async(void* dst, const void* src, size_t bytes);
// Queues a device → host copy of `bytes` on the ops stream and waits for the stream (dst pinned, so the
// copy runs at the link's speed without a staging pass).
void copy_to_host_sync(void* dst, const void* src, size_t bytes);

}  // namespace cuda
}  // namespace qtune
#endif  // QTUNE_HAVE_CUDA
