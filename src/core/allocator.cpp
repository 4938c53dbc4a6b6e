// Caching device allocator: freed blocks go to a size-keyed pool and are reused by later requests of
// similar size, so steady-state training calls cudaMalloc only during the first step.
// Sizes round up to 512 B below 1 MiB and to 2 MiB above; a cached block serves a request when it is
// at most 25% larger (large) or exactly the rounded size (small), bounding waste.
#include "core/allocator.h"

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>

#include "core/error.h"

#ifdef QTUNE_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace qtune {

#ifdef QTUNE_HAVE_CUDA
namespace {

struct Pool {
  std::mutex mu;
  std::multimap<size_t, void*> free_blocks;      // size -> block
  std::unordered_map<void*, size_t> block_size;  // every live or cached block
  DeviceMemoryStats stats;
};

Pool& pool() {
  static Pool* p = new Pool();  // never destroyed: tensors may be freed during static destruction
  return *p;
}

size_t round_size(size_t n) {
  const size_t small = 512, large = 2u << 20;
  if (n < (1u << 20)) return (n + small - 1) / small * small;
  return (n + large - 1) / large * large;
}

// QTUNE_GPU_MEMORY_LIMIT ("24GiB", "80G", "1500MiB" or bytes): a cap on the bytes the pool may obtain from
// cudaMalloc, like torch.cuda.set_per_process_memory_fraction, to see what fits a smaller card. 0: none.
size_t memory_limit() {
  static const size_t limit = [] {
    const char* v = std::getenv("QTUNE_GPU_MEMORY_LIMIT");
    if (!v || !*v) return (size_t)0;
    char* end = nullptr;
    const double x = std::strtod(v, &end);
    const std::string unit = end ? end : "";
    double scale = 1;
    if (unit == "GiB" || unit == "G" || unit == "GB")
      scale = 1024.0 * 1024 * 1024;
    else if (unit == "MiB" || unit == "M" || unit == "MB")
      scale = 1024.0 * 1024;
    else if (!unit.empty() || !(x > 0))
      throw_error(ErrorKind::Usage, "QTUNE_GPU_MEMORY_LIMIT=", v,
                  ": expected a size like 24GiB, 1500MiB or bytes");
    return (size_t)(x * scale);
  }();
  return limit;
}

void release_cached(Pool& p) {
  for (auto& kv : p.free_blocks) {
    cudaFree(kv.second);
    p.block_size.erase(kv.second);
    p.stats.reserved -= kv.first;
  }
  p.free_blocks.clear();
}

}  // namespace

bool cuda_available() {
  static int avail = -1;
  if (avail < 0) {
    int n = 0;
    avail = (cudaGetDeviceCount(&n) == cudaSuccess && n > 0) ? 1 : 0;
    cudaGetLastError();
  }
  return avail == 1;
}

void* device_malloc(size_t nbytes) {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mu);
  size_t sz = round_size(nbytes ? nbytes : 1);
  size_t limit = sz < (1u << 20) ? sz : sz + sz / 4;
  auto it = p.free_blocks.lower_bound(sz);
  void* ptr = nullptr;
  if (it != p.free_blocks.end() && it->first <= limit) {
    ptr = it->second;
    sz = it->first;
    p.free_blocks.erase(it);
  } else {
    const size_t cap = memory_limit();
    if (cap && p.stats.reserved + sz > cap) release_cached(p);
    if (cap && p.stats.reserved + sz > cap)
      throw_error(ErrorKind::OutOfMemory, "CUDA out of memory: tried to allocate ", nbytes / 1048576.0,
                  " MiB with ", p.stats.in_use / 1048576.0, " MiB in use, over QTUNE_GPU_MEMORY_LIMIT (",
                  cap / 1048576.0, " MiB)");
    cudaError_t e = cudaMalloc(&ptr, sz);
    if (e != cudaSuccess) {
      cudaGetLastError();
      release_cached(p);
      e = cudaMalloc(&ptr, sz);
    }
    if (e != cudaSuccess) {
      cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      throw_error(ErrorKind::OutOfMemory, "CUDA out of memory: tried to allocate ", nbytes / 1048576.0,
                  " MiB; ", free_b / 1048576.0, " MiB free of ", total_b / 1048576.0, " MiB; qtune holds ",
                  p.stats.in_use / 1048576.0, " MiB in use (", cudaGetErrorString(e), ")");
    }
    p.block_size[ptr] = sz;
    p.stats.reserved += sz;
    p.stats.cuda_malloc_calls++;
  }
  p.stats.in_use += sz;
  if (p.stats.in_use > p.stats.peak_in_use) p.stats.peak_in_use = p.stats.in_use;
  return ptr;
}

void device_free(void* ptr) {
  if (!ptr) return;
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mu);
  auto it = p.block_size.find(ptr);
  QT_CHECK(it != p.block_size.end(), "device_free of a pointer the allocator did not hand out");
  p.stats.in_use -= it->second;
  p.free_blocks.emplace(it->second, ptr);
}

void device_empty_cache() {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mu);
  cudaDeviceSynchronize();
  release_cached(p);
}

DeviceMemoryStats device_memory_stats() {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mu);
  return p.stats;
}

size_t device_memory_capacity() {
  if (size_t cap = memory_limit()) return cap;
  size_t free_b = 0, total_b = 0;
  if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return total_b;
}

void device_reset_peak() {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mu);
  p.stats.peak_in_use = p.stats.in_use;
}

void* host_pinned_malloc(size_t nbytes) {
  void* p = nullptr;
  if (cudaMallocHost(&p, nbytes) != cudaSuccess) {
    cudaGetLastError();
    throw_error(ErrorKind::OutOfMemory, "could not allocate ", nbytes, " bytes of pinned host memory");
  }
  return p;
}

void host_pinned_free(void* p) {
  if (p) cudaFreeHost(p);
}

void copy_bytes(void* dst, Device dd, const void* src, Device sd, size_t n) {
  if (n == 0) return;
  if (dd == Device::CPU && sd == Device::CPU) {
    std::memcpy(dst, src, n);
    return;
  }
  cudaMemcpyKind kind = dd == Device::CPU   ? cudaMemcpyDeviceToHost
                        : sd == Device::CPU ? cudaMemcpyHostToDevice
                                            : cudaMemcpyDeviceToDevice;
  cudaError_t e = cudaMemcpy(dst, src, n, kind);
  if (e != cudaSuccess)
    throw_error(ErrorKind::Cuda, "cudaMemcpy of ", n, " bytes failed: ", cudaGetErrorString(e));
}

void zero_bytes(void* dst, Device dev, size_t n) {
  if (n == 0) return;
  if (dev == Device::CPU) {
    std::memset(dst, 0, n);
    return;
  }
  cudaError_t e = cudaMemsetAsync(dst, 0, n, 0);
  if (e != cudaSuccess)
    throw_error(ErrorKind::Cuda, "cudaMemsetAsync of ", n, " bytes failed: ", cudaGetErrorString(e));
}

#else  // no CUDA in this build

bool cuda_available() {
  return false;
}
static void no_cuda() {
  throw_error(ErrorKind::Unsupported, "this qtune was built without CUDA (rebuild with nvcc on PATH)");
}
void* device_malloc(size_t) {
  no_cuda();
}
void device_free(void*) {}
void device_empty_cache() {}
DeviceMemoryStats device_memory_stats() {
  return {};
}
void device_reset_peak() {}
size_t device_memory_capacity() {
  return 0;
}
void* host_pinned_malloc(size_t n) {
  return std::malloc(n);
}
void host_pinned_free(void* p) {
  std::free(p);
}
void copy_bytes(void* dst, Device dd, const void* src, Device sd, size_t n) {
  if (dd != Device::CPU || sd != Device::CPU) no_cuda();
  if (n) std::memcpy(dst, src, n);
}
void zero_bytes(void* dst, Device dev, size_t n) {
  if (dev != Device::CPU) no_cuda();
  if (n) std::memset(dst, 0, n);
}

#endif

}  // namespace qtune
