#!/usr/bin/env bash
# End-to-end checks of the qtune program: greedy generation and tokenization equal transformers' output
# on the bundled model (fixtures from tools/make_cli_fixtures.py), and bad input gives one clear error
# line and a non-zero exit.   usage: cli_test.sh path/to/qtune repo_root
set -u
qtune=$1
root=$2
model=$root/models/qtune-tiny-8m
fx=$root/tests/fixtures/cli
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
  if ! grep -Eq "$pattern" "$tmp/err"; then fail "$name: stderr lacks /$pattern/: $(head -c 400 "$tmp/err")"; fi
}

# Greedy generation and prompt ids equal transformers'.
for p in "$fx"/case*.prompt; do
  c=${p%.prompt}
  got=$("$qtune" generate --model "$model" --prompt "$(cat "$p")" --temperature 0 --max-new-tokens 40 --no-stream --quiet; echo x)
  want=$(cat "$c.generate"; echo x)
  [ "$got" = "$want" ] || fail "generate $(basename "$c"): got [${got%x}] want [${want%x}]"
  # Streaming prints the same text.
  got=$("$qtune" generate --model "$model" --prompt "$(cat "$p")" --temperature 0 --max-new-tokens 40 --quiet; echo x)
  [ "$got" = "$want" ] || fail "streaming generate $(basename "$c") differs from transformers"
  ids=$("$qtune" tokenize --model "$model" --file "$p")
  [ "$ids" = "$(cat "$c.ids")" ] || fail "tokenize $(basename "$c"): got $ids want $(cat "$c.ids")"
  back=$("$qtune" tokenize --model "$model" --decode --skip-special-tokens --text "$ids"; echo x)
  [ "$back" = "$(cat "$p"; printf '\nx')" ] || fail "decode round trip $(basename "$c"): [${back%x}]"
done

# Sampling is reproducible for a seed and changes with it.
s1=$("$qtune" generate --model "$model" --prompt "ROMEO:" --temperature 0.9 --top-k 40 --top-p 0.9 --seed 7 --max-new-tokens 30 --quiet)
s2=$("$qtune" generate --model "$model" --prompt "ROMEO:" --temperature 0.9 --top-k 40 --top-p 0.9 --seed 7 --max-new-tokens 30 --quiet)
s3=$("$qtune" generate --model "$model" --prompt "ROMEO:" --temperature 0.9 --top-k 40 --top-p 0.9 --seed 8 --max-new-tokens 30 --quiet)
[ "$s1" = "$s2" ] || fail "same seed gave different samples"
[ "$s1" != "$s3" ] || fail "different seeds gave the same 30 sampled tokens"

"$qtune" --help >/dev/null || fail "--help"
"$qtune" generate --help | grep -q -- "--top-p" || fail "generate --help lacks --top-p"
"$qtune" env >"$tmp/env" 2>&1 || fail "env exited non-zero"
grep -q "CPU backend" "$tmp/env" || fail "env output lacks the CPU backend line"
"$qtune" inspect "$model" >"$tmp/inspect" || fail "inspect of the bundled model"
grep -q "model.layers.0.self_attn.q_proj.weight" "$tmp/inspect" || fail "inspect lacks a tensor name"

# 4-bit: quantizing while loading and loading a folder written by `qtune quantize` give the same text.
q_live=$("$qtune" generate --model "$model" --prompt "ROMEO:" --max-new-tokens 12 --temperature 0 --quiet \
  --load-in-4bit --bnb-4bit-quant-type nf4 --bnb-4bit-use-double-quant) || fail "generate --load-in-4bit"
"$qtune" quantize --model "$model" --out "$tmp/q4" --4bit nf4 --double-quant >/dev/null || fail "quantize --4bit nf4"
q_file=$("$qtune" generate --model "$tmp/q4" --prompt "ROMEO:" --max-new-tokens 12 --temperature 0 --quiet) ||
  fail "generate from the quantized folder"
[ -n "$q_live" ] && [ "$q_live" = "$q_file" ] || fail "4-bit on load [$q_live] != quantized folder [$q_file]"
# --skip-modules as transformers' llm_int8_skip_modules: without it config.json says null (the default,
# lm_head); a list given is written as it is and replaces the default, so lm_head is quantized too.
grep -q '"llm_int8_skip_modules": null' "$tmp/q4/config.json" || fail "default skip list not written as null"
"$qtune" quantize --model "$model" --out "$tmp/q4o" --4bit nf4 --skip-modules o_proj >/dev/null ||
  fail "quantize --skip-modules o_proj"
tr -d ' \n' <"$tmp/q4o/config.json" | grep -q '"llm_int8_skip_modules":\["o_proj"\]' ||
  fail "--skip-modules o_proj not in config.json"
"$qtune" inspect "$tmp/q4o" | grep -q "lm_head.weight.quant_state.bitsandbytes__nf4" ||
  fail "lm_head not quantized with --skip-modules o_proj"
"$qtune" inspect "$tmp/q4o" | grep -Eq "layers.0.self_attn.o_proj.weight .*BF16" ||
  fail "o_proj quantized despite --skip-modules o_proj"
o_live=$("$qtune" generate --model "$model" --prompt "ROMEO:" --max-new-tokens 12 --temperature 0 --quiet \
  --load-in-4bit --skip-modules o_proj) || fail "generate --load-in-4bit --skip-modules o_proj"
o_file=$("$qtune" generate --model "$tmp/q4o" --prompt "ROMEO:" --max-new-tokens 12 --temperature 0 --quiet)
[ -n "$o_live" ] && [ "$o_live" = "$o_file" ] || fail "skip o_proj: on load [$o_live] != folder [$o_file]"
# --device cuda writes bitsandbytes' GPU bytes; without a usable GPU it is a clear error (the GPU path is
# tested in tests/model/cuda/quant_model_cuda_test.cpp).
if ! "$qtune" env 2>/dev/null | grep -q "^GPU 0:"; then
  expect_error "quantize --device cuda without a GPU" "no usable GPU" \
    "$qtune" quantize --model "$model" --out "$tmp/qg" --4bit fp4 --device cuda
fi
expect_error "quantize bad device" "device" "$qtune" quantize --model "$model" --out "$tmp/qg" --4bit fp4 --device tpu

# Bad input: one clear line, non-zero exit.
expect_error "missing model folder" "nonexistent" "$qtune" generate --model "$tmp/nonexistent" --prompt hi
expect_error "no prompt" "prompt" "$qtune" generate --model "$model"
expect_error "unknown subcommand" "frobnicate|subcommand|Extras" "$qtune" frobnicate
mkdir -p "$tmp/trunc"
cp "$model"/config.json "$model"/tokenizer.json "$model"/tokenizer_config.json "$tmp/trunc/"
head -c 100000 "$model/model.safetensors" >"$tmp/trunc/model.safetensors"
expect_error "truncated weights" "model.safetensors" "$qtune" generate --model "$tmp/trunc" --prompt hi
expect_error "inspect truncated" "model.safetensors" "$qtune" inspect "$tmp/trunc/model.safetensors"
mkdir -p "$tmp/badcfg"
cp "$model"/* "$tmp/badcfg/"
sed 's/"LlamaForCausalLM"/"GPTNeoXForCausalLM"/' "$model/config.json" >"$tmp/badcfg/config.json"
expect_error "unknown architecture" "GPTNeoXForCausalLM" "$qtune" generate --model "$tmp/badcfg" --prompt hi
printf '{"hidden_size": 64,' >"$tmp/badcfg/config.json"
expect_error "malformed config" "config.json" "$qtune" generate --model "$tmp/badcfg" --prompt hi
printf 'caf\xc3(\xff)' >"$tmp/bad_utf8.txt"
expect_error "bad UTF-8" "UTF-8" "$qtune" tokenize --model "$model" --file "$tmp/bad_utf8.txt"
expect_error "decode id out of range" "outside the vocabulary" "$qtune" tokenize --model "$model" --decode --text "[1, 999999]"
expect_error "decode not JSON" "JSON array" "$qtune" tokenize --model "$model" --decode --text "1 2 3"
expect_error "bad 4-bit type" "bnb-4bit-quant-type" "$qtune" generate --model "$model" --prompt hi --load-in-4bit --bnb-4bit-quant-type int3
expect_error "bad top-p" "top-p" "$qtune" generate --model "$model" --prompt hi --top-p 1.5

if [ $fails -ne 0 ]; then echo "$fails failure(s)"; exit 1; fi
echo "cli tests passed"
