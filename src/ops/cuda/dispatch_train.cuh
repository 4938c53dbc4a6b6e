// The dtype switch of the training kernels: activations are stored in BF16, gradients of the residual
// stream and of parameters in F32, so each tensor argument of a backward kernel is one of those two and
// the kernels are templated on each argument's storage type (math always in f32). Nest one switch per
// argument: QT_DISPATCH_TRAIN(dx.dtype(), op, "dx", TDX, { QT_DISPATCH_TRAIN(..., { launch<TDX, ...>; }) }).
#pragma once
#include <cuda_bf16.h>

#include "core/error.h"
#include "core/tensor.h"

#define QT_DISPATCH_TRAIN(dtype, op, name, TYPE, ...)                                                      \
  do {                                                                                                     \
    switch (dtype) {                                                                                       \
      case ::qtune::DType::F32: {                                                                          \
        using TYPE = float;                                                                                \
        __VA_ARGS__;                                                                                       \
      } break;                                                                                             \
      case ::qtune::DType::BF16: {                                                                         \
        using TYPE = __nv_bfloat16;                                                                        \
        __VA_ARGS__;                                                                                       \
      } break;                                                                                             \
      default:                                                                                             \
        ::qtune::throw_error(::qtune::ErrorKind::Unsupported, op, ": tensor ", name, " has dtype ",        \
                             ::qtune::dtype_name(dtype), " (the CUDA backward kernels take BF16 or F32)"); \
    }                                                                                                      \
  } while (0)
