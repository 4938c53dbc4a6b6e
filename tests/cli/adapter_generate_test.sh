#!/usr/bin/env bash
# `qtune generate --adapter DIR` picks the adapter kind by adapter_config.json's peft_type: a PEFT IA3 folder
# gives PEFT's greedy text (tools/make_ia3_fixtures.py's adapter; the text is what PEFT's generate() decodes
# for the same prompt), qtune's bottleneck folder changes the text, and bad folders give one clear error
# line naming the file with a non-zero exit.
#   usage: adapter_generate_test.sh path/to/qtune repo_root
set -u
qtune=$1
root=$2
model=$root/models/qtune-tiny-8m
fix=$root/tests/fixtures/peft
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

gen() {
  "$qtune" generate --model "$model" --prompt "Once upon a time" --temperature 0 --max-new-tokens 12 \
    --device cpu --no-stream --quiet "$@"
}

expect_error() {
  local name=$1 pattern=$2
  shift 2
  "$@" >"$tmp/out" 2>"$tmp/err"
  local rc=$?
  if [ $rc -eq 0 ]; then fail "$name: exit 0, expected an error"; return; fi
  if ! grep -Eq "$pattern" "$tmp/err"; then fail "$name: stderr lacks /$pattern/: $(head -c 400 "$tmp/err")"; fi
  [ "$(wc -l <"$tmp/err")" -le 1 ] || fail "$name: more than one line on stderr: $(head -c 400 "$tmp/err")"
}

base=$(gen) || fail "generate without an adapter"
ia3=$(gen --adapter "$fix/ia3_bundled") || fail "generate --adapter ia3_bundled"
want=$(printf 'Once upon a time, I'"'"'ll be a goodester.\nI'"'"'ll be')
[ "$ia3" = "$want" ] || fail "IA3 adapter generates [$ia3], PEFT [$want]"
bn=$(gen --adapter "$fix/bottleneck_bundled") || fail "generate --adapter bottleneck_bundled"
[ -n "$bn" ] && [ "$bn" != "$base" ] || fail "the bottleneck adapter does not change the text [$bn]"

mkdir -p "$tmp/unknown"
cp "$fix/ia3_bundled/adapter_model.safetensors" "$tmp/unknown/"
sed 's/"IA3"/"VERA"/' "$fix/ia3_bundled/adapter_config.json" >"$tmp/unknown/adapter_config.json"
expect_error "unknown peft_type" "unknown/adapter_config.json: peft_type 'VERA' is not supported" \
  gen --adapter "$tmp/unknown"
expect_error "IA3 for another base" "ia3_default/adapter_model.safetensors: .*hidden size 256" \
  gen --adapter "$fix/ia3_default"

if [ $fails -ne 0 ]; then
  echo "$fails failure(s)"
  exit 1
fi
echo "adapter generate tests passed"
