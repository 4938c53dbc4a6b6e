#!/usr/bin/env bash
# `qtune finetune` on bad data and bad LoRA settings (issue 4's list): one clear error line naming the
# file and line, a non-zero exit, nothing written; over-long examples warn and are truncated; an adapter
# with no tensors is never written; trained biases / modules_to_save and --full-finetune from the CLI.   usage: finetune_data_test.sh path/to/qtune repo_root
set -u
qtune=$1
root=$2
model=$root/models/qtune-tiny-8m
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

# expect_error NAME PATTERN CMD...: CMD must exit non-zero and print PATTERN (grep -E) on stderr.
expect_error() {
  local name=$1 pattern=$2
  shift 2
  "$@" >"$tmp/out" 2>"$tmp/err"
  local rc=$?
  if [ $rc -eq 0 ]; then fail "$name: exit 0, expected an error"; return; fi
  if ! grep -Eq -- "$pattern" "$tmp/err"; then fail "$name: stderr lacks /$pattern/: $(head -c 400 "$tmp/err")"; fi
}

ft() { "$qtune" finetune --model "$model" --out "$tmp/out_dir" --max-steps 1 --per-device-train-batch-size 2 \
  --quiet "$@"; }
no_adapter() { [ -e "$tmp/out_dir/adapter_model.safetensors" ] && fail "$1: an adapter was written"; rm -rf "$tmp/out_dir"; }

good='{"prompt": "### Instruction:\nSay hi.\n\n### Response:\n", "completion": "Hi there."}'
printf '%s\n%s\n' "$good" '{"prompt": "a", "completion": "b"' >"$tmp/bad.jsonl"
expect_error "invalid JSON" "bad.jsonl:2: invalid JSON" ft --data "$tmp/bad.jsonl"
no_adapter "invalid JSON"
printf '%s\n\n%s\n' "$good" '{"prompt": "a"}' >"$tmp/missing.jsonl"
expect_error "missing field" "missing.jsonl:3: missing field \"completion\"" ft --data "$tmp/missing.jsonl"
printf '%s\n%s\n' "$good" '{"messages": [{"role": "user"}]}' >"$tmp/msg.jsonl"
expect_error "message without content" "msg.jsonl:2 messages\[0\]: missing field \"content\"" ft --data "$tmp/msg.jsonl"
printf '%s\n' '{"text": 5}' >"$tmp/type.jsonl"
expect_error "non-string field" "type.jsonl:1: field \"text\" must be a string" ft --data "$tmp/type.jsonl"
printf '[{"instruction": "x", "output": "y"},\n {"instruction": "x", "output": }]\n' >"$tmp/arr.json"
expect_error "invalid JSON array" "arr.json: invalid JSON.*line 2" ft --data "$tmp/arr.json"
printf '\n\n' >"$tmp/empty.jsonl"
expect_error "empty dataset" "empty.jsonl: the dataset is empty" ft --data "$tmp/empty.jsonl"
printf '[]' >"$tmp/empty.json"
expect_error "empty array" "empty.json: the dataset is empty" ft --data "$tmp/empty.json"
expect_error "missing data file" "nonexistent.jsonl" ft --data "$tmp/nonexistent.jsonl"
no_adapter "bad data"

# Over-long examples: a warning (progress output on: no --quiet), truncation, and training goes on.
long=$(printf 'word %.0s' $(seq 1 200))
printf '%s\n{"text": "%s"}\n{"text": "short"}\n' "$good" "$long" >"$tmp/long.jsonl"
printf '%s\n' "$good" >"$tmp/good.jsonl"
"$qtune" finetune --model "$model" --out "$tmp/out_dir" --max-steps 1 --per-device-train-batch-size 2 \
  --data "$tmp/long.jsonl" --max-seq-length 16 >"$tmp/out" 2>"$tmp/err"
rc=$?
[ $rc -eq 0 ] || fail "over-long examples: exit $rc: $(head -c 400 "$tmp/err")"
grep -q "warning: 2 of 3 examples are longer than --max-seq-length 16 and were truncated" "$tmp/err" ||
  fail "over-long examples: no truncation warning: $(head -c 400 "$tmp/err")"
[ -f "$tmp/out_dir/adapter_model.safetensors" ] || fail "over-long examples: no adapter written"
rm -rf "$tmp/out_dir"
# Every trained token truncated away (the completion lies past --max-seq-length): an error, not an empty run.
expect_error "nothing to train" "good.jsonl: no example has a trained token" \
  ft --data "$tmp/good.jsonl" --max-seq-length 4 --completion-only-loss
no_adapter "nothing to train"

# LoRA settings: r <= 0; target modules that match nothing list the model's linear modules.
expect_error "r = 0" "LoRA rank r must be > 0, got 0" ft --data "$tmp/good.jsonl" --lora-r 0
expect_error "r < 0" "LoRA rank r must be > 0, got -4" ft --data "$tmp/good.jsonl" --lora-r -4
expect_error "no matching target" \
  "target_modules \[foo_proj\] match none of the model's linear modules: model.layers.0.self_attn.q_proj, .*mlp.down_proj.*lm_head" \
  ft --data "$tmp/good.jsonl" --target-modules foo_proj
no_adapter "no matching target"

# An adapter with no tensors is never written: continuing from one fails naming its file.
mkdir -p "$tmp/empty_adapter"
ft --data "$tmp/good.jsonl" --lora-r 2 >/dev/null 2>&1 || fail "training the small adapter"
cp "$tmp/out_dir/adapter_config.json" "$tmp/empty_adapter/"
rm -rf "$tmp/out_dir"
printf '\x10\x00\x00\x00\x00\x00\x00\x00{}              ' >"$tmp/empty_adapter/adapter_model.safetensors"
expect_error "adapter without tensors" "empty_adapter/adapter_model.safetensors: missing tensor" \
  ft --data "$tmp/good.jsonl" --adapter "$tmp/empty_adapter"
no_adapter "adapter without tensors"

# Trained biases and modules_to_save (PEFT's bias / modules_to_save): the whole lm_head is in the adapter
# and adapter_config.json says so; a bad value is a usage error.
ft --data "$tmp/good.jsonl" --lora-bias all --modules-to-save lm_head >/dev/null 2>"$tmp/err" ||
  fail "--modules-to-save lm_head: $(head -c 400 "$tmp/err")"
python3 - "$tmp/out_dir" <<'PY' || fail "--modules-to-save: lm_head.weight or the config fields are missing"
import json, struct, sys
d = sys.argv[1]
with open(d + "/adapter_model.safetensors", "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    keys = json.loads(f.read(n)).keys()
cfg = json.load(open(d + "/adapter_config.json"))
sys.exit(0 if "base_model.model.lm_head.weight" in keys and cfg["bias"] == "all" and cfg["modules_to_save"] == ["lm_head"] else 1)
PY
rm -rf "$tmp/out_dir"
expect_error "bad --lora-bias" "lora-bias" ft --data "$tmp/good.jsonl" --lora-bias some
expect_error "bad --modules-to-save" "modules_to_save entry 'foo' matches no supported module" \
  ft --data "$tmp/good.jsonl" --modules-to-save foo
no_adapter "bad modules_to_save"

# --full-finetune: a model folder (config.json + model.safetensors + tokenizer) that generates; it refuses
# a 4-bit base and LoRA settings.
ft --data "$tmp/good.jsonl" --full-finetune >/dev/null 2>"$tmp/err" || fail "--full-finetune: $(head -c 400 "$tmp/err")"
for f in config.json model.safetensors tokenizer.json; do
  [ -f "$tmp/out_dir/$f" ] || fail "--full-finetune: no $f"
done
[ -e "$tmp/out_dir/adapter_config.json" ] && fail "--full-finetune wrote an adapter_config.json"
"$qtune" generate --model "$tmp/out_dir" --prompt "Hi" --max-new-tokens 4 --temperature 0 >/dev/null 2>"$tmp/err" ||
  fail "generate from the --full-finetune folder: $(head -c 400 "$tmp/err")"
rm -rf "$tmp/out_dir"
expect_error "full + 4-bit" "4/8-bit weights cannot train" ft --data "$tmp/good.jsonl" --full-finetune --load-in-4bit
expect_error "full + LoRA flag" "--lora-r is a setting of --peft-type lora, but this run trains full" \
  ft --data "$tmp/good.jsonl" --full-finetune --lora-r 4

if [ $fails -ne 0 ]; then echo "$fails failure(s)"; exit 1; fi
expect_error "offload on the CPU" "--offload-activations needs --device cuda and gradient checkpointing" \
  ft --data "$tmp/good.jsonl" --device cpu --offload-activations
echo "finetune data tests passed"
