#!/usr/bin/env bash
# Issue 6's memory goals in one device call each: the longest QLoRA sequence under a 24 GiB and an 80 GiB cap
# (Llama-3-8B shape, HF with its QLoRA recipe side by side), and a Llama-3-70B shape trained with QLoRA at
# sequence 1024. The models are random NF4 + double-quant folders written directly in 4 bits by
# bench/random_nf4_llama.cpp (bitsandbytes' serialization, so transformers loads the same folder).
# Expects build/qtune and build/random_nf4_llama (CUDA build; `cmake --build build --target random_nf4_llama`) and,
# for the HF rows,
# bitsandbytes importable (PYTHONPATH).
#   bash bench/qlora_memory.sh [outdir] long|70b
# qtune's cap: QTUNE_GPU_MEMORY_LIMIT (src/core/allocator.cpp); HF's: torch.cuda.set_per_process_memory_fraction.
set -uo pipefail
out=${1:-/tmp/qlora_memory}
part=${2:-long}
bin=${BIN:-build}
mkdir -p "$out"
export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}:/usr/local/cuda/lib64

words() {  # file rows words_per_row: random words, one {"text"} row each
  python3 - "$@" <<'PY'
import json, random, sys
random.seed(0)
words = ["alpha", "river", "stone", "quiet", "market", "seven", "lantern", "orbit", "garden", "copper", "winter",
         "signal", "harbor", "pencil", "meadow", "engine", "violet", "thunder", "castle", "mirror"]
with open(sys.argv[1], "w") as f:
    for _ in range(int(sys.argv[2])):
        f.write(json.dumps({"text": " ".join(random.choice(words) for _ in range(int(sys.argv[3])))}) + "\n")
PY
}

qtune_run() {  # name model seq steps extra...: one finetune run; prints its done: line
  local name=$1 model=$2 seq=$3 steps=$4
  shift 4
  "$bin/qtune" finetune --model "$model" --data "$out/long.jsonl" --out "$out/$name" --device cuda \
    --target-modules all-linear --lora-r 16 --lora-alpha 32 --lora-dropout 0.05 --learning-rate 2e-4 \
    --max-steps "$steps" --per-device-train-batch-size 1 --max-seq-length "$seq" --logging-steps 1 \
    --load-in-4bit --bnb-4bit-quant-type nf4 --bnb-4bit-use-double-quant --bnb-4bit-compute-dtype bfloat16 \
    --optim paged_adamw_8bit "$@" >"$out/$name.log" 2>&1
  local rc=$?
  echo "== qtune $name (seq $seq, ${QTUNE_GPU_MEMORY_LIMIT:-no cap}): exit $rc"
  grep -E "done:|out of memory|error" "$out/$name.log" | tail -2
  [ -f "$out/$name/training_log.csv" ] && tail -n +2 "$out/$name/training_log.csv" | cut -d, -f1-8
}

tok=tests/fixtures/tokenizer/llama3_style
if [ "$part" = long ]; then
  m8=/tmp/llama3-8b-nf4
  [ -f "$m8/config.json" ] || "$bin/random_nf4_llama" --shape llama3-8b --out "$m8"
  cp "$tok/tokenizer.json" "$tok/tokenizer_config.json" "$m8/"
  words "$out/long.jsonl" 2 140000  # two rows of ~140k tokens; each run truncates to its sequence length
  for seq in 4096 6144; do
    python3 bench/hf_qlora.py --model "$m8" --mode qlora --seq $seq --steps 1 --warmup 1 --memory-gib 24 || true
  done
  python3 bench/hf_qlora.py --model "$m8" --mode qlora --seq 12288 --steps 1 --warmup 1 --memory-gib 80 || true
  for seq in ${SEQS_24:-49152 65536}; do
    QTUNE_GPU_MEMORY_LIMIT=24GiB qtune_run "cap24_$seq" "$m8" $seq 2 --offload-activations
  done
  for seq in ${SEQS_80:-81920}; do
    QTUNE_GPU_MEMORY_LIMIT=80GiB qtune_run "cap80_$seq" "$m8" $seq 2
  done
fi
if [ "$part" = 70b ]; then
  m70=/tmp/llama3-70b-nf4
  t0=$(date +%s)
  [ -f "$m70/config.json" ] || "$bin/random_nf4_llama" --shape llama3-70b --out "$m70"
  echo "wrote the 70B folder in $(($(date +%s) - t0)) s; $(du -sh "$m70" | cut -f1)"
  cp "$tok/tokenizer.json" "$tok/tokenizer_config.json" "$m70/"
  words "$out/long.jsonl" 8 3000
  QTUNE_GPU_MEMORY_LIMIT=${CAP_70B:-44GiB} qtune_run qlora70b "$m70" 1024 ${STEPS_70B:-4}
fi
