#!/usr/bin/env bash
# `qtune merge` end to end: a short fine-tune of the bundled model gives an adapter; the merged folder
# (f32) generates the same greedy text as base + adapter and carries the tokenizer; the default output is
# bf16; sharding writes an index; bad input gives one clear error line and a non-zero exit.
#   usage: merge_test.sh path/to/qtune repo_root
set -u
qtune=$1
root=$2
model=$root/models/qtune-tiny-8m
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

expect_error() {
  local name=$1 pattern=$2
  shift 2
  "$@" >"$tmp/out" 2>"$tmp/err"
  local rc=$?
  if [ $rc -eq 0 ]; then fail "$name: exit 0, expected an error"; return; fi
  if ! grep -Eq "$pattern" "$tmp/err"; then fail "$name: stderr lacks /$pattern/: $(head -c 400 "$tmp/err")"; fi
}

"$qtune" finetune --model "$model" --data "$root/models/data/alpaca_demo_300.json" --out "$tmp/ad" \
  --max-steps 3 --per-device-train-batch-size 2 --max-seq-length 64 --learning-rate 5e-3 \
  --target-modules q_proj,v_proj,down_proj --lora-r 4 --quiet >"$tmp/ft.log" 2>&1 ||
  fail "finetune for the adapter: $(tail -3 "$tmp/ft.log")"

"$qtune" merge --model "$model" --adapter "$tmp/ad" --out "$tmp/m32" --dtype f32 2>"$tmp/merge.log" ||
  fail "merge --dtype f32: $(cat "$tmp/merge.log")"
grep -q "merged 24 LoRA layers" "$tmp/merge.log" || fail "merge report: $(cat "$tmp/merge.log")"
for f in config.json model.safetensors tokenizer.json tokenizer_config.json generation_config.json; do
  [ -f "$tmp/m32/$f" ] || fail "merged folder lacks $f"
done
grep -q '"dtype": "float32"' "$tmp/m32/config.json" || fail "config.json dtype is not float32"
want=$("$qtune" generate --model "$model" --adapter "$tmp/ad" --prompt "### Instruction:" --temperature 0 \
  --max-new-tokens 16 --no-stream --quiet)
got=$("$qtune" generate --model "$tmp/m32" --prompt "### Instruction:" --temperature 0 --max-new-tokens 16 \
  --no-stream --quiet)
[ -n "$want" ] && [ "$got" = "$want" ] || fail "merged model generates [$got], base + adapter [$want]"

"$qtune" merge --model "$model" --adapter "$tmp/ad" --out "$tmp/m16" --max-shard-size 4MB 2>/dev/null ||
  fail "merge (default dtype, shards)"
grep -q '"dtype": "bfloat16"' "$tmp/m16/config.json" || fail "default merge is not bf16"
n_shards=$(ls "$tmp/m16" | grep -c '^model-0000[0-9]-of-0000[0-9].safetensors$')
[ -f "$tmp/m16/model.safetensors.index.json" ] && [ "$n_shards" -ge 3 ] && [ ! -f "$tmp/m16/model.safetensors" ] ||
  fail "--max-shard-size 4MB (a 16 MB model): expected >= 3 shards with an index: $(ls "$tmp/m16")"
"$qtune" generate --model "$tmp/m16" --prompt "### Instruction:" --max-new-tokens 4 --quiet >/dev/null ||
  fail "generate from the sharded bf16 merge"

expect_error "missing adapter" "adapter folder .*nonexistent" \
  "$qtune" merge --model "$model" --adapter "$tmp/nonexistent" --out "$tmp/x"
expect_error "adapter for another base" "lora_qv/adapter_model.safetensors.*shape" \
  "$qtune" merge --model "$model" --adapter "$root/tests/fixtures/peft/lora_qv" --out "$tmp/x"
[ -f "$tmp/x/model.safetensors" ] && fail "a failed merge wrote weights"
expect_error "out is the base" "must differ" "$qtune" merge --model "$model" --adapter "$tmp/ad" --out "$model"
expect_error "bad dtype" "dtype" "$qtune" merge --model "$model" --adapter "$tmp/ad" --out "$tmp/x" --dtype int4
expect_error "bad shard size" "shard size" \
  "$qtune" merge --model "$model" --adapter "$tmp/ad" --out "$tmp/x" --max-shard-size lots

if [ $fails -ne 0 ]; then echo "$fails failure(s)"; exit 1; fi
echo "merge cli tests passed"
