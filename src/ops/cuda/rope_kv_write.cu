// rope_kv_write_at: the decode step's RoPE and KV-cache write in one launch, at a position read from
// device memory (so a captured CUDA graph serves every position). Same arithmetic as rope.cu's kernel:
// a = pos * inv_freq[i] (f32), full-range sincosf, x1·c − x2·s and x2·c + x1·s in f32, rounded once.
#include "ops/cuda/cuda_context.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/device_util.cuh"

namespace qtune {
namespace cuda {

namespace {

// One block. q [Hq, D] in place; k_new, v_new [Hkv, D] → k_cache, v_cache rows pos[0] ([Smax, Hkv, D]).
template <class T>
__global__ void rope_kv_write_kernel(T* __restrict__ q, const T* __restrict__ k_new,
                                     const T* __restrict__ v_new, T* __restrict__ k_cache,
                                     T* __restrict__ v_cache, const int32_t* __restrict__ pos_dev,
                                     const float* __restrict__ inv_freq, int Hq, int Hkv, int D) {
  extern __shared__ float cs[];  // [2, D/2]: cos then sin
  pdl_trigger();                 // a following GEMV may start launching (it waits before its loads)
  pdl_wait();
  const int half = D / 2;
  const int p = *pos_dev;
  const float pos = (float)p;
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    float s, c;
    sincosf(pos * inv_freq[i], &s, &c);
    cs[i] = c;
    cs[half + i] = s;
  }
  __syncthreads();
  const int64_t row = (int64_t)p * Hkv * D;  // cache row p
  for (int e = threadIdx.x; e < (Hq + Hkv) * half; e += blockDim.x) {
    const int h = e / half, i = e % half;
    const float c = cs[i], s = cs[half + i];
    if (h < Hq) {
      T* x = q + (int64_t)h * D;
      float x1 = to_f32(x[i]), x2 = to_f32(x[i + half]);
      x[i] = from_f32<T>(x1 * c - x2 * s);
      x[i + half] = from_f32<T>(x2 * c + x1 * s);
    } else {
      const int hk = h - Hq;
      const T* x = k_new + (int64_t)hk * D;
      T* dst = k_cache + row + (int64_t)hk * D;
      float x1 = to_f32(x[i]), x2 = to_f32(x[i + half]);
      dst[i] = from_f32<T>(x1 * c - x2 * s);
      dst[i + half] = from_f32<T>(x2 * c + x1 * s);
    }
  }
  for (int e = threadIdx.x; e < Hkv * D; e += blockDim.x) v_cache[row + e] = v_new[e];
}

}  // namespace

void rope_kv_write_at(Tensor& q, const Tensor& k_new, const Tensor& v_new, Tensor& k_cache, Tensor& v_cache,
                      const Tensor& pos, const Tensor& inv_freq) {
  const char* op = "rope_kv_write_at";
  require_cuda(q, op, "q");
  require_cuda(k_new, op, "k_new");
  require_cuda(v_new, op, "v_new");
  require_cuda(k_cache, op, "k_cache");
  require_cuda(v_cache, op, "v_cache");
  require_cuda(pos, op, "pos");
  require_cuda(inv_freq, op, "inv_freq");
  require_dtype(pos, op, "pos", DType::I32);
  require_dtype(inv_freq, op, "inv_freq", DType::F32);
  if (k_cache.ndim() != 4 || k_cache.size(0) != 1 || v_cache.shape() != k_cache.shape())
    throw_error(ErrorKind::Shape, op, ": caches must be [1, Smax, Hkv, D] and alike, got k ",
                k_cache.describe(), ", v ", v_cache.describe());
  const int Hkv = checked_int(k_cache.size(2), op), D = checked_int(k_cache.size(3), op);
  checked_int(k_cache.numel(), op);
  if (D % 2 != 0 || q.numel() % D != 0 || k_new.numel() != (int64_t)Hkv * D ||
      v_new.numel() != (int64_t)Hkv * D)
    throw_error(ErrorKind::Shape, op, ": q ", q.describe(), ", k_new ", k_new.describe(), ", v_new ",
                v_new.describe(), " do not fit the cache ", k_cache.describe(), " (one token, even D)");
  if (pos.numel() != 1)
    throw_error(ErrorKind::Shape, op, ": pos must hold one position, got ", pos.describe());
  if (inv_freq.numel() != D / 2)
    throw_error(ErrorKind::Shape, op, ": inv_freq ", inv_freq.describe(), " must have D/2 = ", D / 2,
                " values");
  if (q.dtype() != k_new.dtype() || q.dtype() != v_new.dtype() || q.dtype() != k_cache.dtype() ||
      q.dtype() != v_cache.dtype())
    throw_error(ErrorKind::Unsupported, op, ": q, k_new, v_new and the caches must share one dtype (q ",
                q.describe(), ", k_cache ", k_cache.describe(), ")");
  const int Hq = checked_int(q.numel() / D, op);
  size_t smem = (size_t)D * sizeof(float);
  QT_DISPATCH_FLOAT(q.dtype(), op, T, {
    QT_CUDA_CHECK(launch_pdl(rope_kv_write_kernel<T>, dim3(1), dim3(512), smem, stream(), q.data<T>(),
                             k_new.data<T>(), v_new.data<T>(), k_cache.data<T>(), v_cache.data<T>(),
                             pos.data<int32_t>(), inv_freq.data<float>(), Hq, Hkv, D));
  });
  QT_CUDA_CHECK_LAUNCH("rope_kv_write_kernel");
}

}  // namespace cuda
}  // namespace qtune
