#!/bin/bash
# Builds the CUDA op workbenches (ops_bench, lora_bench) against the qtune_ops/qtune_core libraries of a CUDA build folder.
# usage: bench/kernels/build.sh [build-dir] [out-dir]   (defaults: build-cuda, .carry-cuda)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$root/build-cuda}
out=${2:-$root/.carry-cuda}
mkdir -p "$out"
cmake --build "$build" --target qtune_ops -j2
nvcc -std=c++17 -O2 -arch=sm_90 --expt-relaxed-constexpr -DQTUNE_HAVE_CUDA=1 -I"$root/src" \
  "$root/bench/kernels/ops_bench.cu" "$build/libqtune_ops.a" "$build/libqtune_core.a" \
  -lcublasLt -lcublas -Xcompiler -fopenmp -o "$out/ops_bench"
nvcc -std=c++17 -O2 -arch=sm_90 -DQTUNE_HAVE_CUDA=1 -I"$root/src" \
  "$root/bench/kernels/lora_bench.cu" "$root/src/train/lora_fused.cpp" "$root/src/train/cuda/lora_fused.cu" \
  "$root/src/train/cuda/lora_fused_generic.cu" "$root/src/train/cuda/lora_dropout.cu" \
  "$build/libqtune_ops.a" "$build/libqtune_core.a" \
  -lcublasLt -lcublas -lopenblas -Xcompiler -fopenmp -o "$out/lora_bench"
echo "built $out/ops_bench $out/lora_bench"
