#!/usr/bin/env bash
# CPU offload (issue 3, item 6): decode speed of a Llama-3-8B-shaped model with N of its 32 layers on the
# CPU (f32, `--device-map`) and the rest on the GPU (bf16), against the whole model on the GPU (graph
# decode, and LlamaModel::forward decode: the path a split model takes). One device call; random bf16
# weights written by transformers (bench/make_random_llama.py). Batch 1, greedy, random prompt ids.
#   bash bench/offload_decode.sh [qtune binary]     (env: SHAPE, CPU_LAYERS, PROMPT, NEW, REPEAT)
set -euo pipefail
qtune=${1:-build/qtune}
shape=${SHAPE:-llama3-8b}
model=/tmp/${shape}-random
[ -f "$model/config.json" ] || python3 bench/make_random_llama.py --shape "$shape" --out "$model"
L=$(python3 -c "import json; print(json.load(open('$model/config.json'))['num_hidden_layers'])")
args=(--model "$model" --prompt-len "${PROMPT:-128}" --new-tokens "${NEW:-32}" --repeat "${REPEAT:-1}")
"$qtune" bench "${args[@]}"
QTUNE_DECODE_STEP=0 "$qtune" bench "${args[@]}" | sed 's/^{/{"env":"QTUNE_DECODE_STEP=0",/'
for n in ${CPU_LAYERS:-2 4 8}; do  # the last n layers on the CPU; embedding, norm and LM head on the GPU
  g=$((L - n))
  "$qtune" bench "${args[@]}" --device-map "model.embed_tokens=cuda,model.layers.0-$((g - 1))=cuda,\
model.layers.$g-$((L - 1))=cpu,model.norm=cuda,lm_head=cuda"
done
