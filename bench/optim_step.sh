#!/usr/bin/env bash
# One device call: the optimizer step on one 256M-element f32 parameter, qtune (OptimCuda.StepTime256M:
# adamw_torch and adamw_8bit, bytes moved / time) and the anchors in the same call (bench/optim_anchor.py:
# torch fused AdamW, bitsandbytes AdamW8bit / PagedAdamW8bit, copy bandwidth). bitsandbytes on PYTHONPATH.
#   bash bench/optim_step.sh [test_optim_cuda binary]
set -euo pipefail
bin=${1:-build/test_optim_cuda}
"$bin" --gtest_filter='OptimCuda.StepTime256M' | grep "256M params"
python3 bench/optim_anchor.py
