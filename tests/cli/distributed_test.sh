#!/usr/bin/env bash
# `qtune finetune --nproc-per-node 2` on the CPU: the launcher runs two data-parallel ranks that write one
# adapter and log (rank 0); with --fsdp they log the same per-step losses; a run whose ranks fail ends
# non-zero with the launcher naming the rank; bad launch flags are one usage error.
#   usage: distributed_test.sh path/to/qtune repo_root
set -u
qtune=$1
root=$2
model=$root/models/qtune-tiny-8m
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
# Below 32768: Linux gives 32768-60999 to outgoing connections, which a concurrent test may hold.
port=$((20000 + $$ % 12000))

for i in $(seq 1 16); do
  printf '{"prompt": "Q: what is %d plus one?\\nA:", "completion": " %d."}\n' "$i" $((i + 1))
done >"$tmp/d.jsonl"
ft_once() { OMP_NUM_THREADS=1 "$qtune" finetune --model "$model" --max-steps 2 --per-device-train-batch-size 2 \
  --device cpu --quiet --master-port "$port" "$@"; }
# A port another test took between our pick and the bind is retried on a new port, stderr kept for the checks.
ft() {
  local rc
  for _ in 1 2 3; do
    ft_once "$@" 2>"$tmp/err.try"
    rc=$?
    grep -q "Address already in use" "$tmp/err.try" || break
    port=$((20000 + (port - 20000 + 997) % 12000))
  done
  cat "$tmp/err.try" >&2
  return $rc
}

ft --data "$tmp/d.jsonl" --out "$tmp/dp" --nproc-per-node 2 2>"$tmp/err" || fail "2 ranks: exit $? $(head -c 400 "$tmp/err")"
[ -s "$tmp/dp/adapter_model.safetensors" ] || fail "2 ranks: no adapter"
[ "$(wc -l <"$tmp/dp/training_log.csv")" -eq 3 ] || fail "2 ranks: training_log.csv has not 2 steps"

port=$((port + 1))
ft --data "$tmp/d.jsonl" --out "$tmp/fsdp" --nproc-per-node 2 --fsdp 2>"$tmp/err" || fail "--fsdp: exit $? $(head -c 400 "$tmp/err")"
[ -s "$tmp/fsdp/adapter_model.safetensors" ] || fail "--fsdp: no adapter"
[ "$(cut -d, -f1,2 "$tmp/fsdp/training_log.csv")" = "$(cut -d, -f1,2 "$tmp/dp/training_log.csv")" ] ||
  fail "--fsdp: losses differ from plain data parallel: $(cut -d, -f2 "$tmp/fsdp/training_log.csv" | tr '\n' ' ')"

port=$((port + 1))
ft --data "$tmp/missing.jsonl" --out "$tmp/bad" --nproc-per-node 2 2>"$tmp/err"
rc=$?
[ $rc -ne 0 ] || fail "failing ranks: exit 0"
grep -Eq "launcher: rank [01] \(local rank [01], pid [0-9]+\) exited with status" "$tmp/err" ||
  fail "failing ranks: no launcher line naming the rank: $(head -c 400 "$tmp/err")"

ft --data "$tmp/d.jsonl" --out "$tmp/x" --nproc-per-node 2 --nnodes 2 --node-rank 2 2>"$tmp/err" &&
  fail "node rank outside nnodes: exit 0"
grep -q -- "--node-rank 2 is outside --nnodes 2" "$tmp/err" || fail "node rank: $(head -c 300 "$tmp/err")"

[ $fails -eq 0 ] && echo "distributed_test: all passed"
exit $fails
