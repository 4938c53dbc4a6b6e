#!/usr/bin/env bash
# Paged optimizer states on the GPU (issue 4), one device call: the CUDA optimizer tests (paged ==
# unpaged bit for bit, device memory bounded by the staging slots, checkpoints interchangeable), then
# the step time for 256M f32 params of adamw_torch / adamw_8bit against paged_adamw_32bit /
# paged_adamw_8bit / paged_lion_8bit at 4, 16 and 64 MiB staging slots, with the pinned H2D / D2H copy
# bandwidth measured in the same process and the fraction of it the paged steps reach.
#   bash bench/optim_paged.sh [test_optim_cuda binary]   (default build/test_optim_cuda)
set -euo pipefail
bin=${1:-build/test_optim_cuda}
QTUNE_BENCH=1 "$bin" --gtest_filter='OptimCuda*'
