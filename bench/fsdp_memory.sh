#!/usr/bin/env bash
# Issue 7's --fsdp memory runs, one device call per shape on nvidia-h200-x2: the per-GPU peak of a QLoRA run
# (NF4 + double quant, bf16 compute, r 16 on all linear layers, paged 8-bit AdamW, batch 1, gradient
# checkpointing) on 1 GPU, on 2 GPUs data parallel, and on 2 GPUs with --fsdp (base weights and optimizer
# states sharded; each block gathered just before it runs). The models are random NF4 + double-quant folders
# written directly in 4 bits by bench/random_nf4_llama.cpp (a 70B model never exists in 16 bits here).
# Rank 0 prints: its `fsdp:` line gives the sharded bytes per rank, its `done:` line the GPU peak (with --fsdp
# counted from after the sharding: the load itself still holds the whole model once per rank).
# Expects build/qtune and build/random_nf4_llama (CUDA build; `cmake --build build --target random_nf4_llama`).
#   bash bench/fsdp_memory.sh [outdir] 8b|70b [steps]
set -uo pipefail
out=${1:-/tmp/fsdp_memory}
shape=${2:-8b}
steps=${3:-3}
bin=${BIN:-build}
mkdir -p "$out"
export NCCL_NVLS_ENABLE=0
nl=$(python3 -c "import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__) + '/lib')" 2>/dev/null || true)
export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}:${nl}:/usr/local/cuda/lib64
tok=tests/fixtures/tokenizer/llama3_style
case $shape in
  8b) model=/tmp/llama3-8b-nf4 seq=2048 ;;
  70b) model=/tmp/llama3-70b-nf4 seq=1024 ;;
  *) echo "shape: 8b or 70b" >&2; exit 2 ;;
esac
t0=$(date +%s)
[ -f "$model/config.json" ] || "$bin/random_nf4_llama" --shape "llama3-$shape" --out "$model"
echo "model $model ready after $(($(date +%s) - t0)) s ($(du -sh "$model" | cut -f1))"
cp "$tok/tokenizer.json" "$tok/tokenizer_config.json" "$model/"
python3 - "$out/text.jsonl" <<'PY'
import json, random, sys
random.seed(0)
w = "alpha river stone quiet market seven lantern orbit garden copper winter signal harbor".split()
with open(sys.argv[1], "w") as f:
    for _ in range(16): f.write(json.dumps({"text": " ".join(random.choice(w) for _ in range(3 * 2048))}) + "\n")
PY

run() {  # name extra...: one finetune; prints its fsdp: and done: lines and the per-step losses
  local name=$1
  shift
  "$bin/qtune" finetune --model "$model" --data "$out/text.jsonl" --out "$out/$name" --device cuda \
    --load-in-4bit --bnb-4bit-use-double-quant --bnb-4bit-compute-dtype bfloat16 --optim paged_adamw_8bit \
    --target-modules all-linear --lora-r 16 --lora-alpha 32 --max-seq-length $seq \
    --per-device-train-batch-size 1 --max-steps "$steps" --seed 42 --logging-steps 1 "$@" >"$out/$name.log" 2>&1
  echo "== $shape $name: exit $?"
  grep -E "^fsdp:|done:|rror" "$out/$name.log" | tail -3
  [ -f "$out/$name/training_log.csv" ] && tail -n +2 "$out/$name/training_log.csv" | cut -d, -f1,2,5
}

run one_gpu --gradient-accumulation-steps 2
run dp2 --gradient-accumulation-steps 1 --nproc-per-node 2
run fsdp2 --gradient-accumulation-steps 1 --nproc-per-node 2 --fsdp
