#!/usr/bin/env bash
# One device call: decode and prefill speed of the 8B-shaped model in 4-bit (NF4 + double quant, bf16
# compute), transformers+bitsandbytes vs qtune, batch 1 (issue 3). Expects build/qtune (CUDA) and bitsandbytes
# importable (PYTHONPATH).
#   bash bench/generate_8b_4bit.sh [outdir]
set -euo pipefail
out=${1:-/tmp/bench_4bit}
mkdir -p "$out"
export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}:/usr/local/cuda/lib64
model=/tmp/llama3-8b-random
[ -f "$model/config.json" ] || python3 bench/make_random_llama.py --shape llama3-8b --out "$model"
python3 bench/hf_generate.py --model "$model" --prompt-len 512 --new-tokens 64 --repeat 2 --load-in-4bit | tee "$out/hf.json"
build/qtune bench --model "$model" --device cuda --prompt-len 512 --new-tokens 64 --repeat 2 \
  --load-in-4bit --bnb-4bit-quant-type nf4 --bnb-4bit-use-double-quant --bnb-4bit-compute-dtype bfloat16 | tee "$out/qtune.json"
