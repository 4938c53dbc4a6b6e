// ActivationOffload (see activation_offload.h): pinned host buffers, a copy stream and events.
#include <vector>

#include "core/allocator.h"
#include "core/error.h"
#include "ops/cuda/cuda_context.h"
#include "train/cuda/activation_offload.h"

namespace qtune {

namespace {

// Pinned host buffers survive the ActivationOffload of one step: allocating gigabytes of page-locked
// memory takes long, so the next step reuses them (by slot).
struct HostBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
};
std::vector<HostBuffer>& host_buffers() {
  static std::vector<HostBuffer>* b = new std::vector<HostBuffer>();  // never freed: reused until exit
  return *b;
}

cudaStream_t copy_stream() {
  static cudaStream_t s = [] {
    cudaStream_t st = nullptr;
    QT_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    return st;
  }();
  return s;
}

}  // namespace

struct ActivationOffload::Impl {
  struct Slot {
    Shape shape;
    DType dtype = DType::F32;
    bool stored = false;
    Tensor pending;              // the device tensor until its copy to the host is waited for
    Tensor back;                 // the device tensor being copied back (prefetch)
    cudaEvent_t done = nullptr;  // the slot's last copy
  };
  std::vector<Slot> slots;
  std::vector<int> pending;  // slots with a device tensor still held

  void wait_and_release() {
    for (int s : pending) {
      QT_CUDA_CHECK(cudaStreamWaitEvent(cuda::stream(), slots[s].done, 0));
      slots[s].pending = Tensor();
    }
    pending.clear();
  }
};

ActivationOffload::ActivationOffload(int n) : impl_(std::make_unique<Impl>()) {
  impl_->slots.resize(n);
  for (auto& s : impl_->slots) QT_CUDA_CHECK(cudaEventCreateWithFlags(&s.done, cudaEventDisableTiming));
  if ((int)host_buffers().size() < n) host_buffers().resize(n);
}

ActivationOffload::~ActivationOffload() {
  // Copies still in flight read or write memory this object owns: finish them first.
  cudaStreamSynchronize(copy_stream());
  impl_->wait_and_release();
  for (auto& s : impl_->slots) cudaEventDestroy(s.done);
}

void ActivationOffload::store(int slot, Tensor& t) {
  Impl& m = *impl_;
  if (slot < 0 || slot >= (int)m.slots.size())
    throw_error(ErrorKind::Usage, "activation offload: slot ", slot, " of ", m.slots.size());
  if (!t.is_cuda()) throw_error(ErrorKind::Usage, "activation offload: ", t.describe(), " is not on the GPU");
  m.wait_and_release();  // the previous store's device tensor goes back to the pool now
  Impl::Slot& s = m.slots[slot];
  HostBuffer& h = host_buffers()[slot];
  if (h.bytes != t.nbytes()) {
    cudaStreamSynchronize(copy_stream());
    host_pinned_free(h.ptr);
    h.ptr = host_pinned_malloc(t.nbytes());
    h.bytes = t.nbytes();
  }
  cudaEvent_t ready;
  QT_CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
  QT_CUDA_CHECK(cudaEventRecord(ready, cuda::stream()));  // t is written by then
  QT_CUDA_CHECK(cudaStreamWaitEvent(copy_stream(), ready, 0));
  cudaEventDestroy(ready);  // released once the wait has been satisfied
  QT_CUDA_CHECK(cudaMemcpyAsync(h.ptr, t.raw(), t.nbytes(), cudaMemcpyDeviceToHost, copy_stream()));
  QT_CUDA_CHECK(cudaEventRecord(s.done, copy_stream()));
  s.shape = t.shape();
  s.dtype = t.dtype();
  s.stored = true;
  s.pending = std::move(t);
  t = Tensor();
  m.pending.push_back(slot);
}

void ActivationOffload::flush() {
  impl_->wait_and_release();
}

void ActivationOffload::prefetch(int slot) {
  Impl& m = *impl_;
  Impl::Slot& s = m.slots.at(slot);
  if (!s.stored) throw_error(ErrorKind::Usage, "activation offload: slot ", slot, " was not stored");
  if (s.back.defined()) return;
  m.wait_and_release();
  s.back = Tensor::empty(s.shape, s.dtype, Device::CUDA);
  // The new block may be memory the compute stream used until now: copy only after that work.
  cudaEvent_t ready;
  QT_CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
  QT_CUDA_CHECK(cudaEventRecord(ready, cuda::stream()));
  QT_CUDA_CHECK(cudaStreamWaitEvent(copy_stream(), ready, 0));
  cudaEventDestroy(ready);
  QT_CUDA_CHECK(cudaMemcpyAsync(s.back.raw(), host_buffers()[slot].ptr, s.back.nbytes(),
                                cudaMemcpyHostToDevice, copy_stream()));
  QT_CUDA_CHECK(cudaEventRecord(s.done, copy_stream()));
}

Tensor ActivationOffload::take(int slot) {
  Impl& m = *impl_;
  prefetch(slot);
  Impl::Slot& s = m.slots.at(slot);
  QT_CUDA_CHECK(cudaStreamWaitEvent(cuda::stream(), s.done, 0));
  s.stored = false;
  Tensor t = s.back;
  s.back = Tensor();
  return t;
}

}  // namespace qtune
