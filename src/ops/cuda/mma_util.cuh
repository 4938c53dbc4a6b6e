// Tensor-core building blocks for the flash-attention kernels (sm_80+ instructions, run on sm_90):
// mma.sync m16n8k16 (bf16 in, f32 accumulate), ldmatrix fragment loads from shared memory (plain and
// transposed), cp.async 16-byte copies, and bf16 packing. Internal to ops/cuda.
//
// Fragment layouts of m16n8k16 (g = lane / 4, c = lane % 4):
//   A 16x16 (row): a0 (row g, k 2c..2c+1), a1 (row g+8), a2 (row g, k+8), a3 (row g+8, k+8);
//   B 16x8 (col):  b0 (k 2c..2c+1, col g), b1 (k+8);
//   C 16x8:        c0,c1 (row g, cols 2c, 2c+1), c2,c3 (row g+8).
// ldmatrix m8n8.x4: lanes 8i..8i+7 give the row addresses of matrix i; register i of every lane then
// holds (row g, cols 2c..2c+1) of matrix i, or with .trans (rows 2c..2c+1, col g) of it.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

namespace qtune {
namespace cuda {

// d[4] += a[16x16, row] · b[16x8, col]; bf16 in, f32 accumulate.
__device__ __forceinline__ void mma_bf16_16816(float* d, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, const void* smem_row) {
  unsigned a = (unsigned)__cvta_generic_to_shared(smem_row);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t* r, const void* smem_row) {
  unsigned a = (unsigned)__cvta_generic_to_shared(smem_row);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

// The fragment loads below read a bf16 matrix M stored row-major in shared memory with row stride ld
// (elements; rows 16-byte aligned). Each returns four registers.

// A fragment of the 16x16 tile M[r0.., k0..] (A = M).
__device__ __forceinline__ void load_a(uint32_t* a, const __nv_bfloat16* m, int ld, int r0, int k0,
                                       int lane) {
  ldmatrix_x4(a, m + (r0 + (lane & 15)) * ld + k0 + (lane >> 4) * 8);
}
// A fragment of the 16x16 tile Mᵀ[r0.., k0..] (A = Mᵀ: M holds the tile k-major, M[k][r]).
__device__ __forceinline__ void load_a_trans(uint32_t* a, const __nv_bfloat16* m, int ld, int r0, int k0,
                                             int lane) {
  ldmatrix_x4_trans(a, m + (k0 + (lane & 7) + (lane >> 4) * 8) * ld + r0 + ((lane >> 3) & 1) * 8);
}
// B fragments of two n-tiles (n0, n0+8) × 16 k from M[n][k] (B = Mᵀ, e.g. K rows for Q·Kᵀ):
// {b[0], b[1]} for n-tile n0, {b[2], b[3]} for n0+8.
__device__ __forceinline__ void load_b_nk(uint32_t* b, const __nv_bfloat16* m, int ld, int n0, int k0,
                                          int lane) {
  ldmatrix_x4(b, m + (n0 + (lane & 7) + (lane >> 4) * 8) * ld + k0 + ((lane >> 3) & 1) * 8);
}
// The same from M[k][n] (B = M, e.g. V rows for P·V), through the transposing load.
__device__ __forceinline__ void load_b_kn(uint32_t* b, const __nv_bfloat16* m, int ld, int n0, int k0,
                                          int lane) {
  ldmatrix_x4_trans(b, m + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * ld + n0 + (lane >> 4) * 8);
}

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x = lo (low 16 bits)
  return *reinterpret_cast<uint32_t*>(&v);
}

// 16-byte asynchronous copy global → shared; with valid false the 16 bytes are zero-filled.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
  unsigned saddr = (unsigned)__cvta_generic_to_shared(smem);
  int src_size = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(saddr), "l"(gmem), "r"(src_size));
}
__device__ __forceinline__ void cp_async_commit_group() {
  asm volatile("cp.async.commit_group;\n" ::);
}
template <int N>
__device__ __forceinline__ void cp_async_wait_group() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

}  // namespace cuda
}  // namespace qtune
