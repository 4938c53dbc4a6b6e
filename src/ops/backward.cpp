// Dispatch for the backward ops and training attention declared beside their forwards in ops/<family>.h:
// argument checks (shape errors name the op and the tensor), then the CPU kernel (all F32) or, for
// tensors on the GPU, the CUDA kernel, which checks its dtypes itself (ops/cuda/cuda_ops.h: BF16
// activations, F32 gradients; training attention BF16 or F32 throughout, seq_ids on the GPU too).
#include "ops/activation.h"
#include "ops/attention.h"
#include "ops/check.h"
#include "ops/cpu/backward_ops.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/embedding.h"
#include "ops/matmul.h"
#include "ops/norm.h"
#include "ops/rope.h"

namespace qtune {
using namespace ops_detail;

namespace {

void cpu_f32(const char* op, Device dev, std::initializer_list<Arg> args) {
  if (dev == Device::CUDA) no_cuda(op);
  for (const Arg& a : args) check_dtype(op, a, {DType::F32});
}

// seq_ids, when given: I32 [B, T] on the device of the other tensors.
void check_seq_ids(const char* op, const Tensor* seq_ids, int64_t B, int64_t T, Device dev) {
  if (!seq_ids) return;
  check_dtype(op, {"seq_ids", seq_ids}, {DType::I32});
  check_shape(op, {"seq_ids", seq_ids}, {B, T});
  if (seq_ids->device() != dev)
    throw_error(ErrorKind::Shape, op, ": 'seq_ids' ", seq_ids->describe(), " must be on the device of q");
}

}  // namespace

void embedding_backward(Tensor& dtable, const Tensor& ids, const Tensor& dout) {
  const char* op = "embedding_backward";
  Device dev = check_device(op, {{"dtable", &dtable}, {"ids", &ids}, {"dout", &dout}});
  check_dtype(op, {"ids", &ids}, {DType::I32});
  check_ndim(op, {"dtable", &dtable}, 2);
  int64_t V = dtable.size(0), C = dtable.size(1);
  int64_t rows = check_rows(op, {"dout", &dout}, C);
  if (rows != ids.numel())
    throw_error(ErrorKind::Shape, op, ": 'dout' ", dout.describe(), " has ", rows, " rows for ", ids.numel(),
                " ids");
  if (dev == Device::CUDA) {
#ifdef QTUNE_HAVE_CUDA
    return cuda::embedding_backward(dtable, ids, dout);  // range-checks the ids itself
#else
    no_cuda(op);
#endif
  }
  cpu_f32(op, dev, {{"dtable", &dtable}, {"dout", &dout}});
  const int32_t* id = ids.data<int32_t>();
  for (int64_t n = 0; n < ids.numel(); n++)
    if (id[n] < 0 || id[n] >= V)
      throw_error(ErrorKind::Shape, op, ": token id ", id[n], " at position ", n,
                  " is outside the vocabulary [0, ", V, ")");
  cpu::embedding_backward(dtable, ids, dout);
}

void rmsnorm_backward(Tensor& dx, Tensor* dweight, const Tensor& dout, const Tensor& x, const Tensor& weight,
                      float eps) {
  const char* op = "rmsnorm_backward";
  Device dev = check_device(op, {{"dx", &dx}, {"dout", &dout}, {"x", &x}, {"weight", &weight}});
  check_ndim(op, {"weight", &weight}, 1);
  int64_t C = weight.size(0);
  check_rows(op, {"x", &x}, C);
  check_shape(op, {"dout", &dout}, x.shape());
  check_shape(op, {"dx", &dx}, x.shape());
  if (dweight) {
    check_device(op, {{"x", &x}, {"dweight", dweight}});
    check_shape(op, {"dweight", dweight}, {C});
  }
  if (dev == Device::CUDA) {
#ifdef QTUNE_HAVE_CUDA
    return cuda::rmsnorm_backward(dx, dweight, dout, x, weight, eps);
#else
    no_cuda(op);
#endif
  }
  if (dweight) cpu_f32(op, dev, {{"dweight", dweight}});
  cpu_f32(op, dev, {{"dx", &dx}, {"dout", &dout}, {"x", &x}, {"weight", &weight}});
  cpu::rmsnorm_backward(dx, dweight, dout, x, weight, eps);
}

void rope_backward(Tensor& dx, const Tensor& positions, const Tensor& inv_freq) {
  const char* op = "rope_backward";
  Device dev = check_device(op, {{"dx", &dx}, {"positions", &positions}, {"inv_freq", &inv_freq}});
  check_ndim(op, {"dx", &dx}, 3);
  int64_t N = dx.size(0), D = dx.size(2);
  if (D % 2 != 0) throw_error(ErrorKind::Shape, op, ": head dim must be even, got ", dx.describe());
  check_dtype(op, {"positions", &positions}, {DType::I32});
  check_shape(op, {"positions", &positions}, {N});
  check_shape(op, {"inv_freq", &inv_freq}, {D / 2});
  if (dev == Device::CUDA) {
#ifdef QTUNE_HAVE_CUDA
    return cuda::rope_backward(dx, positions, inv_freq);
#else
    no_cuda(op);
#endif
  }
  cpu_f32(op, dev, {{"dx", &dx}, {"inv_freq", &inv_freq}});
  cpu::rope_backward(dx, positions, inv_freq);
}

void swiglu_backward(Tensor& dgate, Tensor& dup, const Tensor& dout, const Tensor& gate, const Tensor& up,
                     bool accumulate) {
  const char* op = "swiglu_backward";
  Device dev =
      check_device(op, {{"dgate", &dgate}, {"dup", &dup}, {"dout", &dout}, {"gate", &gate}, {"up", &up}});
  for (Arg a : {Arg{"dgate", &dgate}, Arg{"dup", &dup}, Arg{"dout", &dout}, Arg{"up", &up}})
    check_shape(op, a, gate.shape());
  if (dev == Device::CUDA) {
#ifdef QTUNE_HAVE_CUDA
    return cuda::swiglu_backward(dgate, dup, dout, gate, up, accumulate);
#else
    no_cuda(op);
#endif
  }
  cpu_f32(op, dev, {{"dgate", &dgate}, {"dup", &dup}, {"dout", &dout}, {"gate", &gate}, {"up", &up}});
  cpu::swiglu_backward(dgate, dup, dout, gate, up, accumulate);
}

void linear_backward(Tensor* dx, Tensor* dw, Tensor* db, const Tensor& dy, const Tensor& x, const Tensor& w) {
  const char* op = "linear_backward";
  Device dev = check_device(op, {{"dy", &dy}, {"x", &x}, {"w", &w}});
  check_ndim(op, {"w", &w}, 2);
  int64_t O = w.size(0), I = w.size(1);
  int64_t N = check_rows(op, {"x", &x}, I);
  int64_t rows = check_rows(op, {"dy", &dy}, O);
  if (rows != N)
    throw_error(ErrorKind::Shape, op, ": 'dy' ", dy.describe(), " has ", rows, " rows, x ", x.describe(),
                " has ", N);
  if (dx) {
    check_device(op, {{"dy", &dy}, {"dx", dx}});
    check_shape(op, {"dx", dx}, x.shape());
  }
  if (dw) {
    check_device(op, {{"dy", &dy}, {"dw", dw}});
    check_shape(op, {"dw", dw}, w.shape());
  }
  if (db) {
    check_device(op, {{"dy", &dy}, {"db", db}});
    check_shape(op, {"db", db}, {O});
  }
  if (dev == Device::CUDA) {
#ifdef QTUNE_HAVE_CUDA
    return cuda::linear_backward(dx, dw, db, dy, x, w);
#else
    no_cuda(op);
#endif
  }
  cpu_f32(op, dev, {{"dy", &dy}, {"x", &x}, {"w", &w}});
  if (dx) cpu_f32(op, dev, {{"dx", dx}});
  if (dw) cpu_f32(op, dev, {{"dw", dw}});
  if (db) cpu_f32(op, dev, {{"db", db}});
  cpu::linear_backward(dx, dw, db, dy, x, w);
}

// q [B, T, Hq, D]; k, v [B, T, Hkv, D]; returns the kv head count after checking GQA divisibility.
static void check_train_qkv(const char* op, const Tensor& q, const Tensor& k, const Tensor& v) {
  check_ndim(op, {"q", &q}, 4);
  check_ndim(op, {"k", &k}, 4);
  int64_t B = q.size(0), T = q.size(1), Hq = q.size(2), D = q.size(3), Hkv = k.size(2);
  check_shape(op, {"k", &k}, {B, T, Hkv, D});
  check_shape(op, {"v", &v}, {B, T, Hkv, D});
  if (Hkv == 0 || Hq % Hkv != 0)
    throw_error(ErrorKind::Shape, op, ": query heads ", Hq, " are not a multiple of kv heads ", Hkv);
}

void attention_forward_train(Tensor& out, Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                             const Tensor* seq_ids) {
  const char* op = "attention_forward_train";
  Device dev = check_device(op, {{"out", &out}, {"lse", &lse}, {"q", &q}, {"k", &k}, {"v", &v}});
  check_train_qkv(op, q, k, v);
  check_shape(op, {"out", &out}, q.shape());
  check_shape(op, {"lse", &lse}, {q.size(0), q.size(1), q.size(2)});
  check_seq_ids(op, seq_ids, q.size(0), q.size(1), dev);
  if (dev == Device::CUDA) {
#ifdef QTUNE_HAVE_CUDA
    return cuda::attention_forward_train(out, lse, q, k, v, seq_ids);  // checks its dtypes
#else
    no_cuda(op);
#endif
  }
  cpu_f32(op, dev, {{"out", &out}, {"lse", &lse}, {"q", &q}, {"k", &k}, {"v", &v}});
  cpu::attention_forward_train(out, lse, q, k, v, seq_ids);
}

void attention_backward(Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& dout, const Tensor& q,
                        const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                        const Tensor* seq_ids) {
  const char* op = "attention_backward";
  Device dev = check_device(op, {{"dq", &dq},
                                 {"dk", &dk},
                                 {"dv", &dv},
                                 {"dout", &dout},
                                 {"q", &q},
                                 {"k", &k},
                                 {"v", &v},
                                 {"out", &out},
                                 {"lse", &lse}});
  check_train_qkv(op, q, k, v);
  check_shape(op, {"dq", &dq}, q.shape());
  check_shape(op, {"dout", &dout}, q.shape());
  check_shape(op, {"out", &out}, q.shape());
  check_shape(op, {"dk", &dk}, k.shape());
  check_shape(op, {"dv", &dv}, v.shape());
  check_shape(op, {"lse", &lse}, {q.size(0), q.size(1), q.size(2)});
  check_seq_ids(op, seq_ids, q.size(0), q.size(1), dev);
  if (dev == Device::CUDA) {
#ifdef QTUNE_HAVE_CUDA
    return cuda::attention_backward(dq, dk, dv, dout, q, k, v, out, lse, seq_ids);  // checks its dtypes
#else
    no_cuda(op);
#endif
  }
  cpu_f32(op, dev,
          {{"dq", &dq},
           {"dk", &dk},
           {"dv", &dv},
           {"dout", &dout},
           {"q", &q},
           {"k", &k},
           {"v", &v},
           {"out", &out},
           {"lse", &lse}});
  cpu::attention_backward(dq, dk, dv, dout, q, k, v, out, lse, seq_ids);
}

}  // namespace qtune
