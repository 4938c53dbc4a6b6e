// Programmatic dependent launch (Hopper): a kernel launched by launch_pdl may start while the kernel before
// it on the stream finishes. Before pdl_wait() it must read nothing that kernel (or one still running
// before it) may write, and write nothing they read; after pdl_wait() that kernel is complete and its
// writes are visible. pdl_trigger() lets the next such kernel start launching once every block of this
// one has called it or exited. Both are no-ops for kernels launched the ordinary way.
// The small kernels of a decode step (norms, elementwise, RoPE + KV write, split attention) call
// pdl_trigger() then pdl_wait() first: all they gain is that their launch and block start overlap the
// tail of the kernel before, which at batch 1 is a large part of their time.
#pragma once
#include <cuda_runtime.h>

namespace qtune {
namespace cuda {

__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// kernel<<<grid, block, smem, stream>>>(args...) with the programmatic-serialization attribute.
template <class... Params, class... Args>
cudaError_t launch_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                       Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cudaLaunchKernelEx(&cfg, kernel, static_cast<Args&&>(args)...);
}

}  // namespace cuda
}  // namespace qtune
