#!/usr/bin/env bash
# GPU smoke test of `qtune finetune --peft-type` (issue 5): each method trains 30 steps on CUDA with the
# settings of bench/peft_methods.sh, then `generate --adapter` on CUDA; an IA3 and a P-tuning run are
# stopped after step 15 and resumed from checkpoint-10, and their final adapters compared with the straight
# runs'.   usage (repo root, on the device): OUT=dir bench/peft_methods_cuda_smoke.sh path/to/qtune
set -u
: "${OUT:?set OUT to an output folder}"
q=$1
m=models/qtune-tiny-8m; d=models/data/alpaca_demo_300.json
c=(--model $m --data $d --device cuda --max-steps 30 --per-device-train-batch-size 4 --max-seq-length 256
   --completion-only-loss --lr-scheduler-type cosine --warmup-ratio 0.05 --eval-split 0.1 --logging-steps 30 --seed 42)
p=$'### Instruction:\nGive three tips for staying healthy.\n\n### Response:\n'
for spec in "lora:--target-modules all-linear --lora-r 16 --lora-alpha 32 --learning-rate 2e-3" \
  "dora:--target-modules all-linear --lora-r 16 --lora-alpha 32 --use-dora --learning-rate 2e-3" \
  "ia3:--peft-type ia3 --learning-rate 2e-2" "prompt_tuning:--peft-type prompt_tuning --learning-rate 2e-2" \
  "p_tuning:--peft-type p_tuning --learning-rate 2e-2" "prefix_tuning:--peft-type prefix_tuning --learning-rate 2e-2" \
  "prefix_proj:--peft-type prefix_tuning --prefix-projection --learning-rate 2e-2" \
  "bottleneck:--peft-type bottleneck --learning-rate 2e-3"; do
  n=${spec%%:*}; a=${spec#*:}
  echo "== $n"
  $q finetune "${c[@]}" --out $OUT/$n $a 2>&1 | grep -E "finetune:|eval_loss|done:|error" | sed 's/\r//g' | tail -3
  $q generate --model $m --adapter $OUT/$n --prompt "$p" --temperature 0 --max-new-tokens 20 --no-stream --quiet --device cuda 2>&1 | tail -2 | tr '\n' ' '; echo
done
for n in ia3 p_tuning; do
  a=$([ $n = ia3 ] && echo "--peft-type ia3" || echo "--peft-type p_tuning"); lr=2e-2
  $q finetune "${c[@]}" --out $OUT/r_$n $a --learning-rate $lr --save-steps 10 --stop-after-steps 15 --quiet; echo "stop rc $?"
  $q finetune "${c[@]}" --out $OUT/r_$n $a --learning-rate $lr --save-steps 10 --resume --quiet; echo "resume rc $?"
  python3 - $OUT/$n $OUT/r_$n <<'PY'
import sys
from safetensors.numpy import load_file
a, b = (load_file(p + "/adapter_model.safetensors") for p in sys.argv[1:])
import numpy as np
err = max(float(np.linalg.norm(a[k] - b[k]) / max(np.linalg.norm(a[k]), 1e-30)) for k in a)
print("resume vs straight adapter: max rel err", err, "keys", len(a), len(b))
PY
  tail -2 $OUT/r_$n/training_log.csv; tail -2 $OUT/$n/training_log.csv
done
rm -rf "$OUT"/*/checkpoint-*  # keep what comes back small
