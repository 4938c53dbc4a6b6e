#!/bin/bash
# Quantization kernels, qtune next to bitsandbytes in one run on the GPU machine: copy bandwidth, NF4
# dequantize to bf16, the batch-1 4-bit GEMV (standalone and in a CUDA graph), LLM.int8 Linear against fp16
# cuBLAS (numbers and the command go to bench/RESULTS.md, "Quantization kernels (H200)").
#   bench/quant_kernels.sh build [build-dir] [out-dir]  here: builds bench/quant_kernels.cu against a CUDA
#                                                       build folder (default build-qcuda, .carry-qcuda)
#   bench/quant_kernels.sh run [bin-dir]                 on the GPU: the qtune binary, then
#                                                       bench/quant_kernels_bnb.py; bitsandbytes comes from
#                                                       bin-dir/bnb.tar.xz when it is not installed
#   bench/quant_kernels.sh run [bin-dir] int8            on the GPU: only qtune's LLM.int8 Linear lines
#   bench/quant_kernels.sh run [bin-dir] gemv            on the GPU: only qtune's 4-bit GEMV lines
#   bench/quant_kernels.sh run [bin-dir] int8row         on the GPU: only qtune's one-row LLM.int8 lines
#   bench/quant_kernels.sh run [bin-dir] layer           on the GPU: only a decode layer's Linears (qtune)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
case "${1:-}" in
  build)
    build=${2:-$root/build-qcuda}
    out=${3:-$root/.carry-qcuda}
    mkdir -p "$out"
    cmake --build "$build" --target qtune_model -j2
    nvcc -std=c++17 -O2 -arch=sm_90 --expt-relaxed-constexpr -DQTUNE_HAVE_CUDA=1 -I"$root/src" \
      "$root/bench/quant_kernels.cu" "$build/libqtune_model.a" "$build/libqtune_quant.a" \
      "$build/libqtune_ops.a" "$build/libqtune_io.a" "$build/libqtune_core.a" \
      -lcublasLt -lcublas -lopenblas -Xcompiler -fopenmp -o "$out/quant_kernels"
    echo "built $out/quant_kernels"
    ;;
  run)
    bin=${2:-$root/.carry-qcuda}
    nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader || true
    echo "== qtune"
    if [ "${3:-}" = int8 ] || [ "${3:-}" = gemv ] || [ "${3:-}" = int8row ] || [ "${3:-}" = layer ]; then
      "$bin/quant_kernels" "$3"
      exit 0
    fi
    "$bin/quant_kernels"
    if ! python -c "import bitsandbytes" 2>/dev/null && [ -f "$bin/bnb.tar.xz" ]; then
      mkdir -p /tmp/qtune_bnb && tar -C /tmp/qtune_bnb -xJf "$bin/bnb.tar.xz"
      export PYTHONPATH=/tmp/qtune_bnb${PYTHONPATH:+:$PYTHONPATH}
      # only the CUDA 13 libraries were carried: point a CUDA 12 torch at them
      if ! python -c "import sys, torch; sys.exit(0 if torch.version.cuda.startswith('13') else 1)"; then
        export BNB_CUDA_VERSION=130 LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
      fi
    fi
    echo "== bitsandbytes $(python -c 'import bitsandbytes; print(bitsandbytes.__version__)')," \
      "torch $(python -c 'import torch; print(torch.__version__, torch.version.cuda)')"
    python "$root/bench/quant_kernels_bnb.py"
    ;;
  *)
    echo "usage: $0 build [build-dir] [out-dir] | run [bin-dir]" >&2
    exit 2
    ;;
esac
