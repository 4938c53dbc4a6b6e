#!/usr/bin/env bash
# Configures and builds qtune in ./build. QTUNE_CUDA=AUTO (default: the CUDA backend when nvcc is found),
# ON or OFF.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DQTUNE_CUDA="${QTUNE_CUDA:-AUTO}" >/dev/null
cmake --build build -j"$(nproc)"
