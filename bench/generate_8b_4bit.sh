#!/usr/bin/env bash
# One device call: decode and prefill speed of the 8B-shaped model in 4-bit (NF4 + double quant, bf16
# compute), transformers+bitsandbytes vs qtune, batch 1 (issue 3). Expects build/qtune (CUDA) and bitsandbytes
# importable (PYTHONPATH). Besides the default decode (the CUDA-graph step), qtune runs with
# QTUNE_DECODE_STEP=0 (LlamaModel::forward) and QTUNE_DECODE_GRAPH=0 (the step launched eagerly), and once
# in FP4 without double quant. Then both stacks once more with LLM.int8 (threshold 6.0).
#   bash bench/generate_8b_4bit.sh [outdir]
set -euo pipefail
out=${1:-/tmp/bench_4bit}
mkdir -p "$out"
export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}:/usr/local/cuda/lib64
model=/tmp/llama3-8b-random
[ -f "$model/config.json" ] || python3 bench/make_random_llama.py --shape llama3-8b --out "$model"
python3 bench/hf_generate.py --model "$model" --prompt-len 512 --new-tokens 64 --repeat 2 --load-in-4bit | tee "$out/hf.json"
common=(bench --model "$model" --device cuda --prompt-len 512 --new-tokens 64 --repeat 2 --load-in-4bit
  --bnb-4bit-compute-dtype bfloat16)
nf4=(--bnb-4bit-quant-type nf4 --bnb-4bit-use-double-quant)
build/qtune "${common[@]}" "${nf4[@]}" | tee "$out/qtune.json"
QTUNE_DECODE_STEP=0 build/qtune "${common[@]}" "${nf4[@]}" | tee "$out/qtune_forward.json"
QTUNE_DECODE_GRAPH=0 build/qtune "${common[@]}" "${nf4[@]}" | tee "$out/qtune_eager_step.json"
build/qtune "${common[@]}" --bnb-4bit-quant-type fp4 | tee "$out/qtune_fp4.json"
python3 bench/hf_generate.py --model "$model" --prompt-len 512 --new-tokens 64 --repeat 2 --load-in-8bit | tee "$out/hf_int8.json"
build/qtune bench --model "$model" --device cuda --prompt-len 512 --new-tokens 64 --repeat 2 --load-in-8bit \
  --llm-int8-threshold 6.0 | tee "$out/qtune_int8.json"
