#!/usr/bin/env bash
# One device call: QLoRA (NF4 + double quant, bf16 compute, paged 8-bit AdamW, gradient checkpointing) and
# bf16 LoRA on a Llama-3-8B-shaped model (random bf16 weights written by transformers), LoRA r=16 on all
# seven linear projections, sequence 2048, batch 1: transformers+peft+bitsandbytes vs qtune, side by side.
# Expects build/qtune (CUDA) and bitsandbytes importable (PYTHONPATH).
#   bash bench/qlora_e2e.sh [outdir] [steps]
# QTUNE=path: another qtune binary; HF=0: the qtune runs only (their tokens/s, no bitsandbytes needed).
set -euo pipefail
out=${1:-/tmp/qlora_e2e}
steps=${2:-6}
qtune=${QTUNE:-build/qtune}
hf=${HF:-1}
mkdir -p "$out"
export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}:/usr/local/cuda/lib64
model=/tmp/llama3-8b-random
[ -f "$model/config.json" ] || python3 bench/make_random_llama.py --shape llama3-8b --out "$model"
# qtune needs a tokenizer in the folder: a small byte-level BPE one (token ids stay below the model's
# vocab); the benchmark text is random words, and every row is truncated to the sequence length.
cp tests/fixtures/tokenizer/llama3_style/tokenizer.json tests/fixtures/tokenizer/llama3_style/tokenizer_config.json "$model/"
python3 - "$out/text.jsonl" <<'PY'
import json, random, sys
random.seed(0)
words = ["alpha", "river", "stone", "quiet", "market", "seven", "lantern", "orbit", "garden", "copper", "winter",
         "signal", "harbor", "pencil", "meadow", "engine", "violet", "thunder", "castle", "mirror"]
with open(sys.argv[1], "w") as f:
    for _ in range(64):
        f.write(json.dumps({"text": " ".join(random.choice(words) for _ in range(3000))}) + "\n")
PY
run_qtune() {  # name, extra flags...
  local name=$1; shift
  "$qtune" finetune --model "$model" --data "$out/text.jsonl" --out "$out/$name" --device cuda \
    --target-modules all-linear --lora-r 16 --lora-alpha 32 --lora-dropout 0.05 --learning-rate 2e-4 \
    --max-steps $((steps + 2)) --per-device-train-batch-size 1 --max-seq-length 2048 --logging-steps 1 "$@" \
    2> >(tee "$out/$name.log" >&2)
}
[ "$hf" = 0 ] || python3 bench/hf_qlora.py --model "$model" --mode qlora --seq 2048 --steps "$steps" | tee "$out/hf_qlora.json"
run_qtune qtune_qlora --load-in-4bit --bnb-4bit-quant-type nf4 --bnb-4bit-use-double-quant \
  --bnb-4bit-compute-dtype bfloat16 --optim paged_adamw_8bit
[ "$hf" = 0 ] || python3 bench/hf_qlora.py --model "$model" --mode lora --seq 2048 --steps "$steps" | tee "$out/hf_lora.json"
run_qtune qtune_lora --optim adamw_torch
if [ "$hf" = 0 ]; then
  python3 -c "import sys; sys.path.insert(0, 'bench'); import report_qlora as r
for m in ['qlora', 'lora']: print(f'qtune {m}: {r.qtune_row(sys.argv[1], \"qtune_\" + m)[0]:,.0f} tokens/s')" "$out" | tee "$out/report.md"
else
  python3 bench/report_qlora.py "$out" | tee "$out/report.md"
fi
