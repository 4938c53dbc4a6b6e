#!/usr/bin/env bash
# `qtune generate --adapter DIR` with PEFT's prompt tuning, prefix tuning and LLaMA-Adapter folders on the
# bundled model (tools/make_vtok_fixtures.py; expected.txt is what PEFT's generate() decodes for the same
# prompt, greedy, 12 new tokens) gives PEFT's text; bad folders (virtual tokens beyond the context, a base
# with another hidden size, a config that does not match the tensor) give one clear error line naming the
# file and a non-zero exit.
#   usage: prompt_generate_test.sh path/to/qtune repo_root
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

# A copy of fixture $1 in $tmp/$2 with adapter_config.json edited by the python expression $3 (on dict c).
edited() {
  mkdir -p "$tmp/$2"
  cp "$fix/$1/adapter_model.safetensors" "$tmp/$2/"
  python3 -c "import json,sys; c=json.load(open(sys.argv[1])); $3; json.dump(c, open(sys.argv[2], 'w'))" \
    "$fix/$1/adapter_config.json" "$tmp/$2/adapter_config.json"
}

base=$(gen) || fail "generate without an adapter"
for kind in prompt prefix adaption; do
  got=$(gen --adapter "$fix/${kind}_bundled") || fail "generate --adapter ${kind}_bundled"
  want=$(cat "$fix/${kind}_bundled/expected.txt")
  [ "$got" = "$want" ] || fail "$kind adapter generates [$got], PEFT [$want]"
  [ "$got" != "$base" ] || fail "$kind adapter does not change the text"
done

edited prompt_bundled ctx 'c["num_virtual_tokens"] = 5000'
expect_error "virtual tokens beyond the context" "adapter_config.json.*5000 virtual tokens.*max_position_embeddings" \
  gen --adapter "$tmp/ctx"
edited prefix_bundled hidden 'c["token_dim"] = 64'
expect_error "another base" "adapter_config.json.*another base" gen --adapter "$tmp/hidden"
edited prompt_bundled rows 'c["num_virtual_tokens"] = 3'
expect_error "config vs tensor" "adapter_model.safetensors.*prompt_embeddings.*\[3, 256\]" gen --adapter "$tmp/rows"
edited prompt_bundled unknown 'c["peft_type"] = "SOFT_PROMPT"'
expect_error "unknown peft_type" "adapter_config.json.*SOFT_PROMPT" gen --adapter "$tmp/unknown"

[ $fails -eq 0 ] && echo "prompt_generate_test: all passed"
exit $((fails > 0))
