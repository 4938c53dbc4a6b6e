#!/usr/bin/env bash
# The main job: install dependencies, build, and generate text with the bundled model on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
model=models/qtune-tiny-8m
echo "== greedy =="
build/qtune generate --model "$model" --prompt "ROMEO:" --max-new-tokens 80 --temperature 0
echo "== sampled (temperature 0.8, top-p 0.95, seed 1) =="
build/qtune generate --model "$model" --prompt "The history of" --max-new-tokens 80 --temperature 0.8 --top-p 0.95 --seed 1
