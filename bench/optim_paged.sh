#!/usr/bin/env bash
# Paged optimizer states on the GPU (issue 4), one device call: the CUDA optimizer tests (paged ==
# unpaged bit for bit, device memory bounded by the staging slots, checkpoints interchangeable, many
# tensors batched through the pinned state arena), then two timings with the pinned H2D / D2H copy
# bandwidth measured in the same process and the fraction of it the paged steps reach:
#   StepTime256M    one 256M-element f32 param: adamw_torch / adamw_8bit against paged_adamw_32bit /
#                   paged_adamw_8bit / paged_lion_8bit at 4, 16 and 64 MiB staging slots
#   StepTimeLora8B  the 448 LoRA tensors (r = 16, all linear layers) of a Llama-3-8B shape, 16,384 to
#                   229,376 values each, 41.9M in all: the same optimizers, paged against unpaged
#   bash bench/optim_paged.sh [test_optim_cuda binary] [gtest filter]
#   (defaults: build/test_optim_cuda, 'OptimCuda*')
set -euo pipefail
bin=${1:-build/test_optim_cuda}
QTUNE_BENCH=1 "$bin" --gtest_filter="${2:-OptimCuda*}"
