#!/usr/bin/env bash
# PEFT methods side by side (issue 5): fine-tune the bundled model on the bundled Alpaca rows with LoRA,
# DoRA, IA3, prompt tuning, P-tuning, prefix tuning, LLaMA-Adapter and bottleneck adapters, the same data,
# split, seed, steps, batch and schedule for all, and report per method: trainable parameters, adapter size
# on disk (adapter_model.safetensors), peak memory (host RSS on the CPU, the device's peak on the GPU),
# tokens/s and the final eval loss (plus the base model's eval loss on the same rows). Results:
# bench/RESULTS.md.
#   usage: [DEVICE=cpu|cuda] [STEPS=100] [OUT=dir] bench/peft_methods.sh [path/to/qtune]
#   (output in $OUT, default out/peft_methods-$DEVICE/; /usr/bin/time -v adds CPU seconds where present)
# No packing (prompt-learning methods put their virtual tokens before whole rows); completion-only loss,
# so every method's eval loss counts the same target tokens. The peak learning rate is per family:
# 2e-3 for the weight adapters (LoRA, DoRA, bottleneck), 2e-2 for IA3, the prompt-learning methods and the
# LLaMA-Adapter (their few parameters move little at LoRA's rate; the adapter's gates start at zero).
set -euo pipefail
cd "$(dirname "$0")/.."
qtune=${1:-build/qtune}
device=${DEVICE:-cpu}
out=${OUT:-out/peft_methods-$device}
mkdir -p "$out"
timer=()
[ -x /usr/bin/time ] && timer=(/usr/bin/time -v)
common=(--model models/qtune-tiny-8m --data models/data/alpaca_demo_300.json --device "$device"
  --per-device-train-batch-size 4 --max-seq-length 256 --completion-only-loss
  --lr-scheduler-type cosine --warmup-ratio 0.05 --eval-split 0.1 --eval-steps 50 --logging-steps 10
  --seed 42)

steps=${STEPS:-100}
run() {
  local name=$1 n=$steps
  shift
  [ "$name" = base ] && n=1
  rm -rf "${out:?}/$name"
  echo "== $name: $qtune finetune ${common[*]} --max-steps $n --out $out/$name $*"
  local t0=$(date +%s.%N)
  "${timer[@]}" "$qtune" finetune "${common[@]}" --max-steps "$n" --out "$out/$name" "$@" 2>&1 | tee "$out/$name.log" |
    grep -E "^(finetune:|done:)|eval_loss|Maximum resident|Elapsed"
  echo "wall seconds: $(awk "BEGIN { print $(date +%s.%N) - $t0 }")" >> "$out/$name.log"
  rm -rf "$out/$name"/checkpoint-*
}

if [ "${SUMMARY_ONLY:-0}" != 1 ]; then # SUMMARY_ONLY=1: only the table, from the logs in $out
run base --learning-rate 0 # one LoRA step at lr 0 (B stays 0): the base model's eval loss
run lora --target-modules all-linear --lora-r 16 --lora-alpha 32 --learning-rate 2e-3
run dora --target-modules all-linear --lora-r 16 --lora-alpha 32 --use-dora --learning-rate 2e-3
run ia3 --peft-type ia3 --learning-rate 2e-2
run prompt_tuning --peft-type prompt_tuning --num-virtual-tokens 20 --learning-rate 2e-2
run p_tuning --peft-type p_tuning --num-virtual-tokens 20 --learning-rate 2e-2
run prefix_tuning --peft-type prefix_tuning --num-virtual-tokens 20 --learning-rate 2e-2
run adaption_prompt --peft-type adaption_prompt --adapter-len 10 --adapter-layers 6 --learning-rate 2e-2
run bottleneck --peft-type bottleneck --adapter-style houlsby --bottleneck-size 64 --learning-rate 2e-3
fi

# One table row per method: settings from the finetune: line, the final eval loss (the last training_log.csv
# row with one), tokens/s (the run's figure, evals included, and the median of the training steps'), peak RSS,
# CPU seconds and wall time from /usr/bin/time -v, adapter size from the folder.
python3 - "$out" <<'PY'
import csv, os, re, statistics, sys
out = sys.argv[1]
names = ["base", "lora", "dora", "ia3", "prompt_tuning", "p_tuning", "prefix_tuning", "adaption_prompt",
         "bottleneck"]
gpu = "GPU peak" in open(f"{out}/lora.log").read()
print("| method | adapter | trainable params | adapter_model.safetensors | peak " + ("GPU memory" if gpu else "RSS") +
      " | tokens/s (median step) | CPU s (user+sys) | final eval loss | wall s |")
print("|---|---|---|---|---|---|---|---|---|")
for name in names:
    log = open(f"{out}/{name}.log").read()
    head = re.search(r"finetune: .* steps, (.*), (\d+) trainable parameters", log)
    rows = list(csv.DictReader(open(f"{out}/{name}/training_log.csv")))
    ev = [r for r in rows if r["eval_loss"] not in ("", "-1")]
    done = re.search(r"done: .* ([0-9.]+) tokens/s, peak memory ([0-9.]+) MiB(?: \(GPU peak ([^)]*)\))?", log)
    tps = float(done.group(1))
    step_tps = statistics.median(float(r["tokens_per_s"]) for r in rows)
    mem = done.group(3) if gpu else f"{float(done.group(2)):.0f} MiB"
    wall = float(re.search(r"wall seconds: ([0-9.]+)", log).group(1))
    cpu = [re.search(rf"{k} time \(seconds\): ([0-9.]+)", log) for k in ("User", "System")]
    cpu_s = f"{sum(float(c.group(1)) for c in cpu):.1f}" if all(cpu) else "–"
    size = os.path.getsize(f"{out}/{name}/adapter_model.safetensors")
    size_s = f"{size / 1024:.1f} KiB" if size < 1 << 20 else f"{size / (1 << 20):.2f} MiB"
    print(f"| {name} | {head.group(1)} | {int(head.group(2)):,} | {size_s} | {mem} | "
          f"{tps:,.0f} ({step_tps:,.0f}) | {cpu_s} | {float(ev[-1]['eval_loss']):.4f} (step {ev[-1]['step']}) | {wall:.1f} |")
PY
