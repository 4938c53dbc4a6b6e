#!/usr/bin/env bash
# Installs dependencies, builds, and runs every test (CUDA tests too when a GPU is present).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
labels="-L cpu"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then labels=""; fi
cd build && ctest --output-on-failure $labels -j"$(nproc)"
