#!/usr/bin/env bash
# One device call: where a qtune QLoRA / bf16 LoRA step on the Llama-3-8B shape spends its time
# (QTUNE_PROFILE=1: GPU time per section, see src/core/profile.h), same settings as bench/qlora_e2e.sh.
#   bash bench/qlora_profile.sh [outdir] [steps]     (QTUNE=path: another qtune binary; MODES="qlora": one mode)
set -euo pipefail
out=${1:-/tmp/qlora_profile}
steps=${2:-4}
qtune=${QTUNE:-build/qtune}
mkdir -p "$out"
export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}:/usr/local/cuda/lib64
model=/tmp/llama3-8b-random
[ -f "$model/config.json" ] || python3 bench/make_random_llama.py --shape llama3-8b --out "$model"
cp tests/fixtures/tokenizer/llama3_style/tokenizer.json tests/fixtures/tokenizer/llama3_style/tokenizer_config.json "$model/"
python3 -c "
import json, random
random.seed(0)
w = 'alpha river stone quiet market seven lantern orbit garden copper'.split()
with open('$out/text.jsonl', 'w') as f:
    for _ in range(16): f.write(json.dumps({'text': ' '.join(random.choice(w) for _ in range(3000))}) + '\n')"
for mode in ${MODES:-qlora lora}; do
  flags=(--optim adamw_torch)
  [ $mode = qlora ] && flags=(--load-in-4bit --bnb-4bit-quant-type nf4 --bnb-4bit-use-double-quant
                              --bnb-4bit-compute-dtype bfloat16 --optim paged_adamw_8bit)
  QTUNE_PROFILE=1 "$qtune" finetune --model "$model" --data "$out/text.jsonl" --out "$out/$mode" --device cuda \
    --target-modules all-linear --lora-r 16 --lora-alpha 32 --lora-dropout 0.05 --max-steps "$steps" \
    --per-device-train-batch-size 1 --max-seq-length 2048 --logging-steps 1 "${flags[@]}" 2>&1 |
    grep -v "^warning" | tee "$out/$mode.log"
done
