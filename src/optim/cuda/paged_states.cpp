// PagedStates (paged_states.h): the pinned state arena, packing a step's jobs into slot-sized batches
// with as few copies as their host layout allows, and the copy-in / update / copy-out pipeline over two
// staging slots on two side streams and the default stream.
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

// Host addresses of a job's arrays: state1, state2, absmax1, absmax2 (null when absent).
void host_arrays(const PagedJob& j, char* out[4]) {
  for (int k = 0; k < 2; ++k) {
    out[k] = j.state[k].defined() ? (char*)j.state[k].raw() : nullptr;
    out[2 + k] = j.absmax[k].defined() ? (char*)j.absmax[k].raw() : nullptr;
  }
}

// Elements [off, off + len) of job `job`, staged at byte offsets at[] of its slot (state1, state2,
// absmax1, absmax2; -1 when absent).
struct Piece {
  size_t job;
  int64_t off, len;
  int64_t at[4];
};

// One copy between host memory (inside `arena` when not null) and byte offset `dev` of a slot.
struct Segment {
  char* host;
  int64_t dev, bytes;
  const void* arena;
};

struct Batch {
  std::vector<Piece> pieces;
  std::vector<Segment> segments;  // the same copies in and out
};

// Appends a copy, or extends the last one when the new one continues it on the host, inside the same
// arena, and in the slot.
void add_segment(std::vector<Segment>& segs, char* host, int64_t dev, int64_t bytes, const void* arena) {
  if (bytes <= 0) return;
  if (!segs.empty() && arena) {
    Segment& b = segs.back();
    if (b.arena == arena && b.host + b.bytes == host && b.dev + b.bytes == dev) {
      b.bytes += bytes;
      return;
    }
  }
  segs.push_back({host, dev, bytes, arena});
}

}  // namespace

Tensor pinned_host_zeros(const Shape& shape, DType dtype) {
  const size_t nb = dtype_nbytes(dtype, shape_numel(shape));
  void* ptr = host_pinned_malloc(nb ? nb : 1);
  std::memset(ptr, 0, nb);
  return Tensor::borrow(ptr, shape, dtype, Device::CPU, std::shared_ptr<void>(ptr, host_pinned_free));
}

std::vector<PagedHostStates> pinned_state_arena(const std::vector<PagedStateSpec>& specs) {
  // Byte offsets of every array in the arena (-1: absent), then one allocation.
  std::vector<int64_t> at(4 * specs.size(), -1);
  std::vector<PagedHostStates> out(specs.size());
  int64_t total = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    const PagedStateSpec& s = specs[i];
    const int64_t n = shape_numel(s.shape);
    const int64_t bytes[4] = {n * (s.quantized ? 1 : 4), s.two_states ? n * (s.quantized ? 1 : 4) : -1,
                              s.quantized ? (n + s.blocksize - 1) / s.blocksize * 4 : -1,
                              s.quantized && s.two_states ? (n + s.blocksize - 1) / s.blocksize * 4 : -1};
    const int64_t start = total;
    for (int k = 0; k < 4; ++k) {
      if (bytes[k] < 0) continue;
      at[4 * i + k] = total;
      total += align256(bytes[k]);
    }
    out[i].region_bytes = total - start;
  }
  char* base = (char*)host_pinned_malloc((size_t)std::max<int64_t>(total, 1));
  std::memset(base, 0, (size_t)total);
  std::shared_ptr<void> owner(base, host_pinned_free);
  for (size_t i = 0; i < specs.size(); ++i) {
    const PagedStateSpec& s = specs[i];
    out[i].arena = base;
    const Shape ab = {(shape_numel(s.shape) + s.blocksize - 1) / s.blocksize};
    for (int k = 0; k < 2; ++k) {
      if (at[4 * i + k] >= 0)
        out[i].state[k] = Tensor::borrow(base + at[4 * i + k], s.shape, s.quantized ? DType::U8 : DType::F32,
                                         Device::CPU, owner);
      if (at[4 * i + 2 + k] >= 0)
        out[i].absmax[k] = Tensor::borrow(base + at[4 * i + 2 + k], ab, DType::F32, Device::CPU, owner);
    }
  }
  return out;
}

struct PagedStates::Impl {
  int64_t slot_bytes;
  char* staging = nullptr;  // device [kSlots · slot_bytes]
  cudaStream_t h2d = nullptr, d2h = nullptr;
  cudaEvent_t in[kSlots] = {}, done[kSlots] = {}, out[kSlots] = {}, end = nullptr;
  bool pending = false;        // a step's copy-out may be in flight
  std::vector<PagedJob> held;  // the last step's jobs: their host tensors stay alive until it ends
  int64_t copies = 0;          // copies of the last step, each way

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

  // The copies of one batch between the slot at `slot` and the host states.
  void copy(const Batch& b, char* slot, bool to_device, cudaStream_t stream) const {
    for (const Segment& sg : b.segments) {
      const cudaError_t e =
          to_device
              ? cudaMemcpyAsync(slot + sg.dev, sg.host, (size_t)sg.bytes, cudaMemcpyHostToDevice, stream)
              : cudaMemcpyAsync(sg.host, slot + sg.dev, (size_t)sg.bytes, cudaMemcpyDeviceToHost, stream);
      if (e != cudaSuccess)
        throw_error(ErrorKind::Cuda, "paged optimizer states: copy of ", sg.bytes, " bytes at slot offset ",
                    sg.dev, " of ", slot_bytes, (to_device ? " from" : " to"), " host ", (const void*)sg.host,
                    (sg.arena ? " (arena)" : ""), ": ", cudaGetErrorString(e));
    }
  }

  // Packs the jobs into batches of at most slot_bytes each. An arena job that fits a slot goes whole, as
  // its region's bytes (one copy, merged with the previous region when they are adjacent in the arena),
  // into this batch or, when the room left is too small, the next. Other jobs are cut into pieces, each
  // array at a 256-byte boundary, filling the room left unless only a sliver of a large tensor fits.
  std::vector<Batch> plan() const {
    std::vector<Batch> batches(1);
    int64_t cursor = 0;  // bytes used in the current batch
    for (size_t ji = 0; ji < held.size(); ++ji) {
      const PagedJob& j = held[ji];
      const JobShape js(j);
      char* host[4];
      host_arrays(j, host);
      if (j.region_bytes > 0 && j.region_bytes <= slot_bytes) {
        if (cursor + j.region_bytes > slot_bytes) {
          batches.emplace_back();
          cursor = 0;
        }
        Piece pc{ji, 0, j.n, {-1, -1, -1, -1}};
        for (int k = 0; k < 4; ++k)
          if (host[k]) pc.at[k] = cursor + (host[k] - host[0]);
        add_segment(batches.back().segments, host[0], cursor, j.region_bytes, j.arena);
        batches.back().pieces.push_back(pc);
        cursor += j.region_bytes;
        continue;
      }
      const int64_t max_len = (slot_bytes - kSlack) / js.unit_bytes() * js.unit;
      if (max_len <= 0)
        throw_error(ErrorKind::Unsupported, "paged optimizer states: a staging slot of ", slot_bytes,
                    " bytes cannot hold one state block of ", js.unit, " values");
      for (int64_t off = 0; off < j.n;) {
        const int64_t room = slot_bytes - cursor - kSlack;
        const int64_t fit = room > 0 ? room / js.unit_bytes() * js.unit : 0;
        const int64_t len = std::min(fit, j.n - off);
        // A full slot, or only a sliver of a large tensor fits: start the next batch.
        if (len <= 0 || (len < j.n - off && len < max_len / 8)) {
          batches.emplace_back();
          cursor = 0;
          continue;
        }
        Batch& b = batches.back();
        Piece pc{ji, off, len, {-1, -1, -1, -1}};
        for (int k = 0; k < js.states; ++k) {
          pc.at[k] = cursor;
          add_segment(b.segments, host[k] + off * js.value_bytes, cursor, len * js.value_bytes, j.arena);
          cursor += align256(len * js.value_bytes);
        }
        for (int k = 0; k < js.absmaxes; ++k) {
          pc.at[2 + k] = cursor;
          add_segment(b.segments, host[2 + k] + off / js.blocksize * 4, cursor, js.blocks(len) * 4, j.arena);
          cursor += align256(js.blocks(len) * 4);
        }
        b.pieces.push_back(pc);
        off += len;
      }
    }
    if (batches.back().pieces.empty()) batches.pop_back();
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
  for (const PagedJob& j : jobs) {
    for (int k = 0; k < 2; ++k)
      QT_CHECK(!j.state[k].is_cuda() && !j.absmax[k].is_cuda(), "paged states must be host tensors");
    if (j.region_bytes > 0) {  // every array inside the region
      char* host[4];
      host_arrays(j, host);
      for (int k = 0; k < 4; ++k)
        QT_CHECK(!host[k] || host[k] >= host[0], "paged states: arena region does not start at state1");
      QT_CHECK(j.region_bytes % 256 == 0 && j.arena, "paged states: arena region of ", j.region_bytes,
               " bytes");
    }
  }
  m.held = std::move(jobs);  // the previous step's tensors are the same storages, or wait() ran
  const std::vector<Batch> batches = m.plan();
  cudaStream_t main = 0;  // the legacy default stream, where the update kernels run
  m.copies = 0;
  std::vector<PagedPiece> staged;
  for (size_t i = 0; i < batches.size(); ++i) {
    const int s = (int)(i % kSlots);
    char* slot = m.staging + s * m.slot_bytes;
    check(cudaStreamWaitEvent(m.h2d, m.out[s], 0), "wait");  // slot s copied out (batch i - 2)
    m.copy(batches[i], slot, true, m.h2d);
    check(cudaEventRecord(m.in[s], m.h2d), "record");
    check(cudaStreamWaitEvent(main, m.in[s], 0), "wait");
    staged.clear();
    for (const Piece& pc : batches[i].pieces) {
      PagedPiece pp{&m.held[pc.job], pc.off, pc.len, {}};
      for (int k = 0; k < 2; ++k) {
        if (pc.at[k] >= 0) pp.st.state[k] = slot + pc.at[k];
        if (pc.at[2 + k] >= 0) pp.st.absmax[k] = (float*)(slot + pc.at[2 + k]);
      }
      staged.push_back(pp);
    }
    update(staged);
    check(cudaEventRecord(m.done[s], main), "record");
    check(cudaStreamWaitEvent(m.d2h, m.done[s], 0), "wait");
    m.copy(batches[i], slot, false, m.d2h);
    check(cudaEventRecord(m.out[s], m.d2h), "record");
    m.copies += (int64_t)batches[i].segments.size();
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

int64_t PagedStates::copies_per_direction() const {
  return impl_->copies;
}

}  // namespace qtune
