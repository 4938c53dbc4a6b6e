// Device memory: a caching allocator (a training step reuses blocks instead of calling cudaMalloc),
// pinned host memory, and byte copies between devices. Without CUDA these throw Unsupported.
#pragma once
#include <cstddef>

#include "core/tensor.h"

namespace qtune {

// True when built with CUDA and a usable GPU is present.
bool cuda_available();

// Returns at least nbytes of device memory (256-byte aligned). Throws ErrorKind::OutOfMemory with the
// request, the free memory and what the cache holds when the card is full even after the cache is freed.
void* device_malloc(size_t nbytes);
void device_free(void* p);
// Gives every cached, unused block back to the driver.
void device_empty_cache();

struct DeviceMemoryStats {
  size_t in_use = 0;       // bytes handed out and not yet freed
  size_t peak_in_use = 0;  // high-water mark of in_use
  size_t reserved = 0;     // bytes obtained from cudaMalloc (in use + cached)
  size_t cuda_malloc_calls = 0;
};
DeviceMemoryStats device_memory_stats();
void device_reset_peak();
// The bytes the pool may hold in all: QTUNE_GPU_MEMORY_LIMIT when set, else the card's total memory.
size_t device_memory_capacity();

// Page-locked host memory for async copies.
void* host_pinned_malloc(size_t nbytes);
void host_pinned_free(void* p);

// Copies n bytes between any two devices (synchronous).
void copy_bytes(void* dst, Device dst_dev, const void* src, Device src_dev, size_t n);
// Sets n bytes to zero. On the GPU it is queued on the legacy default stream, which orders it with the
// (blocking) stream the kernels run on, without waiting on the host.
void zero_bytes(void* dst, Device dev, size_t n);

}  // namespace qtune
