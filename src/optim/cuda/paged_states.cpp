// PagedStates (paged_states.h): cutting a step's jobs into slot-sized batches and running the
// copy-in / update / copy-out pipeline over two staging slots on two side streams and the default stream.
#include "optim/cuda/paged_states.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>

#include "core/allocator.h"
#include "core/error.h"

namespace qtune {

namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw_error(ErrorKind::Cuda, "paged optimizer states: ", what, ": ", cudaGetErrorString(e));
}

int64_t align256(int64_t b) {
  return (b + 255) / 256 * 256;
}

constexpr int kSlots = 2;
constexpr int64_t kSlack = 4 * 256;  // room for the 256-byte alignment of up to four arrays per piece

// Layout of one job's states: bytes per value, number of state arrays, absmax arrays, piece unit.
struct JobShape {
  int64_t value_bytes, states, absmaxes, unit, blocksize;
  explicit JobShape(const PagedJob& j)
      : value_bytes(j.quantized ? 1 : 4),
        states(j.state[1].defined() ? 2 : 1),
        absmaxes(j.quantized ? (j.state[1].defined() ? 2 : 1) : 0),
        unit(j.quantized ? j.blocksize : 256),
        blocksize(j.blocksize) {}
  int64_t unit_bytes() const { return states * value_bytes * unit + absmaxes * 4; }  // + absmax of a block
  int64_t blocks(int64_t len) const { return (len + blocksize - 1) / blocksize; }
};

// Elements [off, off + len) of job `job`, staged at byte offsets at[] of its slot (state1, state2,
// absmax1, absmax2; -1 when absent).
struct Piece {
  size_t job;
  int64_t off, len;
  int64_t at[4];
};

}  // namespace

Tensor pinned_host_zeros(const Shape& shape, DType dtype) {
  const size_t nb = dtype_nbytes(dtype, shape_numel(shape));
  void* ptr = host_pinned_malloc(nb ? nb : 1);
  std::memset(ptr, 0, nb);
  return Tensor::borrow(ptr, shape, dtype, Device::CPU, std::shared_ptr<void>(ptr, host_pinned_free));
}

struct PagedStates::Impl {
  int64_t slot_bytes;
  char* staging = nullptr;  // device [kSlots · slot_bytes]
  cudaStream_t h2d = nullptr, d2h = nullptr;
  cudaEvent_t in[kSlots] = {}, done[kSlots] = {}, out[kSlots] = {}, end = nullptr;
  bool pending = false;        // a step's copy-out may be in flight
  std::vector<PagedJob> held;  // the last step's jobs: their host tensors stay alive until it ends

  void setup() {
    if (staging) return;
    check(cudaStreamCreateWithFlags(&h2d, cudaStreamNonBlocking), "stream");
    check(cudaStreamCreateWithFlags(&d2h, cudaStreamNonBlocking), "stream");
    for (int s = 0; s < kSlots; ++s) {
      check(cudaEventCreateWithFlags(&in[s], cudaEventDisableTiming), "event");
      check(cudaEventCreateWithFlags(&done[s], cudaEventDisableTiming), "event");
      check(cudaEventCreateWithFlags(&out[s], cudaEventDisableTiming), "event");
    }
    check(cudaEventCreateWithFlags(&end, cudaEventDisableTiming), "event");
    staging = (char*)device_malloc((size_t)(kSlots * slot_bytes));
  }

  // Byte copies of every piece of a batch between the slot at `slot` and the host states.
  void copy(const std::vector<Piece>& batch, char* slot, bool to_device, cudaStream_t stream) {
    for (const Piece& pc : batch) {
      const PagedJob& j = held[pc.job];
      const JobShape js(j);
      for (int k = 0; k < 2; ++k) {
        if (pc.at[k] >= 0) {
          char* host = (char*)j.state[k].raw() + pc.off * js.value_bytes;
          char* dev = slot + pc.at[k];
          const size_t nb = (size_t)(pc.len * js.value_bytes);
          check(to_device ? cudaMemcpyAsync(dev, host, nb, cudaMemcpyHostToDevice, stream)
                          : cudaMemcpyAsync(host, dev, nb, cudaMemcpyDeviceToHost, stream),
                "state copy");
        }
        if (pc.at[2 + k] >= 0) {
          char* host = (char*)(j.absmax[k].data<float>() + pc.off / js.blocksize);
          char* dev = slot + pc.at[2 + k];
          const size_t nb = (size_t)(js.blocks(pc.len) * 4);
          check(to_device ? cudaMemcpyAsync(dev, host, nb, cudaMemcpyHostToDevice, stream)
                          : cudaMemcpyAsync(host, dev, nb, cudaMemcpyDeviceToHost, stream),
                "absmax copy");
        }
      }
    }
  }

  // Cuts the jobs into pieces packed greedily into batches of at most slot_bytes each.
  std::vector<std::vector<Piece>> plan() const {
    std::vector<std::vector<Piece>> batches(1);
    int64_t cursor = 0;  // bytes used in the current batch
    for (size_t ji = 0; ji < held.size(); ++ji) {
      const JobShape js(held[ji]);
      const int64_t max_len = (slot_bytes - kSlack) / js.unit_bytes() * js.unit;
      if (max_len <= 0)
        throw_error(ErrorKind::Unsupported, "paged optimizer states: a staging slot of ", slot_bytes,
                    " bytes cannot hold one state block of ", js.unit, " values");
      const int64_t n = held[ji].n;
      for (int64_t off = 0; off < n;) {
        const int64_t room = slot_bytes - cursor - kSlack;
        const int64_t fit = room > 0 ? room / js.unit_bytes() * js.unit : 0;
        const int64_t len = std::min(fit, n - off);
        // A full slot, or only a sliver of a large tensor fits: start the next batch.
        if (len <= 0 || (len < n - off && len < max_len / 8)) {
          batches.emplace_back();
          cursor = 0;
          continue;
        }
        Piece pc{ji, off, len, {-1, -1, -1, -1}};
        for (int k = 0; k < js.states; ++k) {
          pc.at[k] = cursor;
          cursor += align256(len * js.value_bytes);
        }
        for (int k = 0; k < js.absmaxes; ++k) {
          pc.at[2 + k] = cursor;
          cursor += align256(js.blocks(len) * 4);
        }
        batches.back().push_back(pc);
        off += len;
      }
    }
    if (batches.back().empty()) batches.pop_back();
    return batches;
  }
};

PagedStates::PagedStates(int64_t slot_bytes) : impl_(std::make_unique<Impl>()) {
  if (slot_bytes < (64 << 10))
    throw_error(ErrorKind::Usage, "paged optimizer states: staging slot of ", slot_bytes,
                " bytes, need at least 65536");
  impl_->slot_bytes = align256(slot_bytes);
}

PagedStates::~PagedStates() {
  Impl& m = *impl_;
  if (!m.staging) return;
  if (m.pending) cudaEventSynchronize(m.end);
  m.held.clear();
  device_free(m.staging);
  for (int s = 0; s < kSlots; ++s) {
    cudaEventDestroy(m.in[s]);
    cudaEventDestroy(m.done[s]);
    cudaEventDestroy(m.out[s]);
  }
  cudaEventDestroy(m.end);
  cudaStreamDestroy(m.h2d);
  cudaStreamDestroy(m.d2h);
}

void PagedStates::step(std::vector<PagedJob> jobs, const PagedUpdate& update) {
  Impl& m = *impl_;
  m.setup();
  for (const PagedJob& j : jobs)
    for (int k = 0; k < 2; ++k)
      QT_CHECK(!j.state[k].is_cuda() && !j.absmax[k].is_cuda(), "paged states must be host tensors");
  m.held = std::move(jobs);  // the previous step's tensors are the same storages, or wait() ran
  const std::vector<std::vector<Piece>> batches = m.plan();
  cudaStream_t main = 0;  // the legacy default stream, where the update kernels run
  for (size_t i = 0; i < batches.size(); ++i) {
    const int s = (int)(i % kSlots);
    char* slot = m.staging + s * m.slot_bytes;
    check(cudaStreamWaitEvent(m.h2d, m.out[s], 0), "wait");  // slot s copied out (batch i - 2)
    m.copy(batches[i], slot, true, m.h2d);
    check(cudaEventRecord(m.in[s], m.h2d), "record");
    check(cudaStreamWaitEvent(main, m.in[s], 0), "wait");
    for (const Piece& pc : batches[i]) {
      StagedStates st;
      for (int k = 0; k < 2; ++k) {
        if (pc.at[k] >= 0) st.state[k] = slot + pc.at[k];
        if (pc.at[2 + k] >= 0) st.absmax[k] = (float*)(slot + pc.at[2 + k]);
      }
      update(m.held[pc.job], pc.off, pc.len, st);
    }
    check(cudaEventRecord(m.done[s], main), "record");
    check(cudaStreamWaitEvent(m.d2h, m.done[s], 0), "wait");
    m.copy(batches[i], slot, false, m.d2h);
    check(cudaEventRecord(m.out[s], m.d2h), "record");
  }
  check(cudaEventRecord(m.end, m.d2h), "record");
  check(cudaStreamWaitEvent(main, m.end, 0), "wait");  // later work on the default stream sees the states
  m.pending = true;
}

void PagedStates::wait() {
  Impl& m = *impl_;
  if (!m.pending) return;
  check(cudaEventSynchronize(m.end), "synchronize");
  m.pending = false;
}

int64_t PagedStates::device_bytes() const {
  return impl_->staging ? kSlots * impl_->slot_bytes : 0;
}

}  // namespace qtune
