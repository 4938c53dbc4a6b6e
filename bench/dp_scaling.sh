#!/usr/bin/env bash
# One call on a 2-GPU machine (issue 7): the 8B-shaped QLoRA run (NF4 + double quant, seq 2048, r16 all-linear,
# paged 8-bit AdamW) on 2 GPUs (--nproc-per-node 2, per-rank accumulation A) against 1 GPU with accumulation 2A,
# same data order: per-step losses of both and tokens/s. NCCL from the torch venv when the system has none.
#   bash bench/dp_scaling.sh [outdir] [steps] [A]
set -euo pipefail
out=${1:-/tmp/dp}; steps=${2:-8}; acc=${3:-2}
mkdir -p "$out"
export NCCL_NVLS_ENABLE=0
nl=$(python3 -c "import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__) + '/lib')" 2>/dev/null || true)
export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}:${nl}:/usr/local/cuda/lib64
model=/tmp/llama3-8b-random
[ -f "$model/config.json" ] || python3 bench/make_random_llama.py --shape llama3-8b --out "$model"
cp tests/fixtures/tokenizer/llama3_style/tokenizer.json tests/fixtures/tokenizer/llama3_style/tokenizer_config.json "$model/"
python3 -c "
import json, random
random.seed(0)
w = 'alpha river stone quiet market seven lantern orbit garden copper'.split()
with open('$out/text.jsonl', 'w') as f:
    for _ in range(128): f.write(json.dumps({'text': ' '.join(random.choice(w) for _ in range(3000))}) + '\n')"
common=(--model "$model" --data "$out/text.jsonl" --device cuda --load-in-4bit --bnb-4bit-use-double-quant
        --bnb-4bit-compute-dtype bfloat16 --optim paged_adamw_8bit --target-modules all-linear --lora-r 16
        --lora-alpha 32 --max-seq-length 2048 --per-device-train-batch-size 1 --max-steps "$steps" --seed 42 --quiet)
build/qtune finetune "${common[@]}" --out "$out/dp2" --gradient-accumulation-steps "$acc" --nproc-per-node 2
build/qtune finetune "${common[@]}" --out "$out/dp1" --gradient-accumulation-steps $((2 * acc))
python3 - "$out" <<'PY'
import csv, sys
d = sys.argv[1]
a = list(csv.DictReader(open(f"{d}/dp2/training_log.csv")))
b = list(csv.DictReader(open(f"{d}/dp1/training_log.csv")))
worst = max(abs(float(x["loss"]) - float(y["loss"])) / abs(float(y["loss"])) for x, y in zip(a, b))
t2 = sum(float(x["tokens_per_s"]) for x in a[1:]) / max(1, len(a) - 1)
t1 = sum(float(y["tokens_per_s"]) for y in b[1:]) / max(1, len(b) - 1)
for x, y in zip(a, b): print(f"step {x['step']}: 2 GPUs {float(x['loss']):.5f}  1 GPU {float(y['loss']):.5f}")
print(f"worst relative loss difference {worst:.2e}; tokens/s 2 GPUs {t2:,.0f} vs 1 GPU {t1:,.0f} = {t2 / t1:.2f}x")
PY
