#!/usr/bin/env bash
# Installs dependencies, builds, and runs every test: the CPU suite everywhere, the CUDA suite too when
# a GPU is present. Without a GPU the CUDA backend is not built (its tests could not run), which keeps
# a CPU-only check fast.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
labels="-L cpu"
cuda=OFF
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  labels=""
  cuda=AUTO
fi
QTUNE_CUDA=$cuda scripts/build.sh
cd build && ctest --output-on-failure $labels -j"$(nproc)"
