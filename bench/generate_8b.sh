#!/usr/bin/env bash
# One device call: an 8B-shaped Llama (random bf16, written by transformers), transformers vs qtune,
# prefill (512 tokens) and decode (128 tokens) speed, batch 1. Expects build/qtune (CUDA) to exist.
#   bash bench/generate_8b.sh [outdir]
set -euo pipefail
out=${1:-/tmp/bench_out}
mkdir -p "$out"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
model=/tmp/llama3-8b-random
[ -f "$model/config.json" ] || python3 bench/make_random_llama.py --shape llama3-8b --out "$model"
python3 bench/hf_generate.py --model "$model" --prompt-len 512 --new-tokens 128 | tee "$out/hf.json"
build/qtune bench --model "$model" --device cuda --prompt-len 512 --new-tokens 128 | tee "$out/qtune.json"
python3 bench/report_generate.py "$out/hf.json" "$out/qtune.json" | tee "$out/report.md"
