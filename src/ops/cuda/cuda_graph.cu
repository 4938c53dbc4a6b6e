// CudaGraph: stream capture of the ops stream into a CUDA graph, instantiate, replay (cuda_graph.h).
#include <exception>

#include "ops/cuda/cuda_context.h"
#include "ops/cuda/cuda_graph.h"

namespace qtune {
namespace cuda {

CudaGraph::~CudaGraph() {
  if (exec_) cudaGraphExecDestroy((cudaGraphExec_t)exec_);
  if (graph_) cudaGraphDestroy((cudaGraph_t)graph_);
}

bool CudaGraph::capture(const std::function<void()>& body) {
  cudaStream_t s = stream();
  cudaError_t e = cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal);
  if (e != cudaSuccess) {
    error_ = std::string("cudaStreamBeginCapture: ") + cudaGetErrorString(e);
    cudaGetLastError();
    return false;
  }
  std::string body_error;
  try {
    body();
  } catch (const std::exception& ex) {
    body_error = ex.what();
  }
  cudaGraph_t g = nullptr;
  e = cudaStreamEndCapture(s, &g);
  if (!body_error.empty() || e != cudaSuccess || !g) {
    error_ = !body_error.empty() ? body_error : std::string("cudaStreamEndCapture: ") + cudaGetErrorString(e);
    if (g) cudaGraphDestroy(g);
    cudaGetLastError();  // capture errors are sticky until read
    return false;
  }
  cudaGraphExec_t x = nullptr;
  e = cudaGraphInstantiate(&x, g, 0);
  if (e != cudaSuccess) {
    error_ = std::string("cudaGraphInstantiate: ") + cudaGetErrorString(e);
    cudaGraphDestroy(g);
    cudaGetLastError();
    return false;
  }
  graph_ = g;
  exec_ = x;
  return true;
}

void CudaGraph::launch() {
  QT_CUDA_CHECK(cudaGraphLaunch((cudaGraphExec_t)exec_, stream()));
}

void copy_to_device_async(void* dst, const void* src, size_t bytes) {
  QT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream()));
}

void copy_device_async(void* dst, const void* src, size_t bytes) {
  QT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream()));
}

void copy_to_host_sync(void* dst, const void* src, size_t bytes) {
  QT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream()));
  QT_CUDA_CHECK(cudaStreamSynchronize(stream()));
}

}  // namespace cuda
}  // namespace qtune
