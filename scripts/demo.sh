#!/usr/bin/env bash
# The main job: install dependencies, build, then QLoRA-fine-tune the bundled model on the CPU
# (NF4 + double quant base, LoRA on every linear layer) on 300 bundled Alpaca rows, and generate with
# the adapter. Output: out/demo-qlora/ (PEFT adapter, training_log.csv, loss_curve.png).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
model=models/qtune-tiny-8m
data=models/data/alpaca_demo_300.json
out=out/demo-qlora
prompt=$'### Instruction:\nGive three tips for staying healthy.\n\n### Response:\n'
echo "== the base model on an Alpaca-format prompt (it was trained on plain text only) =="
build/qtune generate --model "$model" --prompt "$prompt" --max-new-tokens 60 --temperature 0
echo
echo "== QLoRA fine-tuning on $data (NF4 + double quant, r 16 on all linear layers, CPU) =="
rm -rf "$out"
build/qtune finetune --model "$model" --data "$data" --out "$out" \
  --load-in-4bit --bnb-4bit-quant-type nf4 --bnb-4bit-use-double-quant \
  --target-modules all-linear --lora-r 16 --lora-alpha 32 \
  --learning-rate 2e-3 --lr-scheduler-type cosine --warmup-ratio 0.05 \
  --max-steps "${QTUNE_DEMO_STEPS:-80}" --per-device-train-batch-size 4 --packing --max-seq-length 256 \
  --completion-only-loss --eval-split 0.05 --eval-steps 20 --logging-steps 5 --seed 42 \
  --device "${QTUNE_DEMO_DEVICE:-cpu}"
echo
echo "== the same prompt with the adapter (greedy) =="
build/qtune generate --model "$model" --adapter "$out" --load-in-4bit --bnb-4bit-quant-type nf4 --bnb-4bit-use-double-quant \
  --prompt "$prompt" --max-new-tokens 60 --temperature 0
echo
echo "loss log: $out/training_log.csv   loss curve: $out/loss_curve.png   adapter: $out/"
