#!/usr/bin/env bash
# QLoRA quality on the CPU (issue 4): fine-tune the bundled model on the bundled Alpaca rows twice with the
# same settings and seed, the base in 16/32 bits (LoRA) and in NF4 + double quant (QLoRA), and compare the
# final eval losses (goal: within 2%), tokens/s and peak RSS (/usr/bin/time -v). Results: bench/RESULTS.md.
#   usage: [SEEDS="42 1 2"] bench/qlora_vs_lora_cpu.sh [path/to/qtune]
#   (default build/qtune and seed 42; one LoRA + one QLoRA run per seed; output in out/qlora_vs_lora/)
set -euo pipefail
cd "$(dirname "$0")/.."
qtune=${1:-build/qtune}
out=out/qlora_vs_lora
mkdir -p "$out"
common=(--model models/qtune-tiny-8m --data models/data/alpaca_demo_300.json
  --target-modules all-linear --lora-r 16 --lora-alpha 32
  --learning-rate 2e-3 --lr-scheduler-type cosine --warmup-ratio 0.05
  --num-train-epochs 3 --per-device-train-batch-size 4 --max-seq-length 256 --completion-only-loss
  --eval-split 0.1 --eval-steps 50 --logging-steps 10)
seeds=${SEEDS:-42}

run() {
  local name=$1
  shift
  rm -rf "${out:?}/$name"
  echo "== $name: $qtune finetune ${common[*]} --out $out/$name $*"
  /usr/bin/time -v "$qtune" finetune "${common[@]}" --out "$out/$name" "$@" 2>&1 | tee "$out/$name.log" |
    grep -E "^(finetune:|done:)|eval_loss|Maximum resident|Elapsed"
}

for seed in $seeds; do
  run "lora_s$seed" --seed "$seed"
  run "qlora_s$seed" --seed "$seed" --load-in-4bit --bnb-4bit-quant-type nf4 --bnb-4bit-use-double-quant
done

# Summary per seed: final eval loss (the last training_log.csv row with one), tokens/s (the run's figure,
# evals included, and the median of the training steps'), peak RSS and wall time from /usr/bin/time -v.
python3 - "$out" $seeds <<'PY'
import csv, re, statistics, sys
out, seeds = sys.argv[1], sys.argv[2:]
for seed in seeds:
    res = {}
    for kind in ("lora", "qlora"):
        name = f"{kind}_s{seed}"
        rows = list(csv.DictReader(open(f"{out}/{name}/training_log.csv")))
        ev = [r for r in rows if r["eval_loss"] not in ("", "-1")]
        log = open(f"{out}/{name}.log").read()
        tps = float(re.search(r"done: .* ([0-9.]+) tokens/s", log).group(1))
        step_tps = statistics.median(float(r["tokens_per_s"]) for r in rows)
        rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", log).group(1)) / 1024
        wall = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", log).group(1)
        res[kind] = float(ev[-1]["eval_loss"])
        print(f"seed {seed:>3} {kind:5s} steps {ev[-1]['step']}  final eval loss {res[kind]:.4f}  "
              f"{tps:.0f} tokens/s (median step {step_tps:.0f})  peak RSS {rss:.0f} MiB  wall {wall}")
    d = (res["qlora"] - res["lora"]) / res["lora"]
    print(f"seed {seed:>3} QLoRA vs LoRA final eval loss: {100 * d:+.2f}% (goal: within 2%)")
PY
