#!/usr/bin/env bash
# `qtune finetune --peft-type` end to end: IA3, prompt tuning (text init) and LLaMA-Adapter (packed) on the
# bundled model and data write PEFT folders that `qtune generate --adapter` loads (greedy text differs from the base model's); an IA3
# checkpoint resumes to the uninterrupted run's adapter; flags of another method and other bad combinations
# give one clear error line, a non-zero exit and no adapter.
#   usage: peft_finetune_test.sh path/to/qtune repo_root
set -u
qtune=$1
root=$2
model=$root/models/qtune-tiny-8m
data=$root/models/data/alpaca_demo_300.json
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
  if ! grep -Eq -- "$pattern" "$tmp/err"; then fail "$name: stderr lacks /$pattern/: $(head -c 400 "$tmp/err")"; fi
  [ -e "$tmp/bad/adapter_model.safetensors" ] && fail "$name: an adapter was written"
  rm -rf "$tmp/bad"
}

ft() { "$qtune" finetune --model "$model" --data "$data" --max-steps 8 --per-device-train-batch-size 2 \
  --max-seq-length 64 --device cpu "$@"; }

prompt=$'### Instruction:\nGive three tips for staying healthy.\n\n### Response:\n'
gen() { "$qtune" generate --model "$model" --prompt "$prompt" --temperature 0 --max-new-tokens 24 --no-stream \
  --quiet --device cpu "$@"; }

# IA3: train, save a checkpoint, load the folder in generate.
ft --out "$tmp/ia3" --peft-type ia3 --learning-rate 5e-2 --save-steps 4 >"$tmp/ia3.log" 2>&1 ||
  fail "finetune --peft-type ia3: $(tail -3 "$tmp/ia3.log")"
grep -q "finetune: .* 24 IA3 vectors (8 feed-forward), 7680 trainable parameters" "$tmp/ia3.log" ||
  fail "ia3 log line: $(grep finetune: "$tmp/ia3.log")"
grep -q '"peft_type": "IA3"' "$tmp/ia3/adapter_config.json" || fail "adapter_config.json is not IA3"
[ -f "$tmp/ia3/checkpoint-4/optimizer.safetensors" ] || fail "no IA3 checkpoint-4"
base=$(gen)
tuned=$(gen --adapter "$tmp/ia3") || fail "generate --adapter (IA3)"
[ -n "$tuned" ] && [ "$tuned" != "$base" ] || fail "IA3 adapter generates the base model's text [$tuned]"

# Prompt tuning from a text's embeddings: a PEFT PROMPT_TUNING folder that generate puts ahead of the prompt.
ft --out "$tmp/pt" --peft-type prompt_tuning --prompt-tuning-init-text "Answer the instruction." \
  --num-virtual-tokens 8 --learning-rate 3e-2 >"$tmp/pt.log" 2>&1 ||
  fail "finetune --peft-type prompt_tuning: $(tail -3 "$tmp/pt.log")"
grep -q "8 virtual tokens (PROMPT_TUNING, TEXT init), 2048 trainable parameters" "$tmp/pt.log" ||
  fail "prompt tuning log line: $(grep finetune: "$tmp/pt.log")"
grep -q '"prompt_tuning_init": "TEXT"' "$tmp/pt/adapter_config.json" || fail "adapter_config.json is not TEXT init"
tuned=$(gen --adapter "$tmp/pt") || fail "generate --adapter (prompt tuning)"
[ -n "$tuned" ] && [ "$tuned" != "$base" ] || fail "prompt tuning generates the base model's text [$tuned]"

# LLaMA-Adapter, packed rows: a PEFT ADAPTION_PROMPT folder with trained (non-zero) gates.
ft --out "$tmp/ap" --peft-type adaption_prompt --adapter-len 6 --adapter-layers 3 --packing \
  --learning-rate 2e-1 >"$tmp/ap.log" 2>&1 || fail "finetune --peft-type adaption_prompt: $(tail -3 "$tmp/ap.log")"
grep -q "6 gated prompt rows in the top 3 layers, 4611 trainable parameters" "$tmp/ap.log" ||
  fail "adaption_prompt log line: $(grep finetune: "$tmp/ap.log")"
grep -q '"peft_type": "ADAPTION_PROMPT"' "$tmp/ap/adapter_config.json" &&
  grep -q '"adapter_len": 6' "$tmp/ap/adapter_config.json" || fail "adapter_config.json is not ADAPTION_PROMPT, 6 rows"
tuned=$(gen --adapter "$tmp/ap") || fail "generate --adapter (LLaMA-Adapter)"
[ -n "$tuned" ] && [ "$tuned" != "$base" ] || fail "LLaMA-Adapter generates the base model's text [$tuned]"

# Resume: the same final adapter as the uninterrupted run.
ft --out "$tmp/ia3r" --peft-type ia3 --learning-rate 5e-2 --save-steps 4 --stop-after-steps 6 --quiet \
  >/dev/null 2>&1
[ $? -eq 3 ] || fail "--stop-after-steps exit code"
ft --out "$tmp/ia3r" --peft-type ia3 --learning-rate 5e-2 --save-steps 4 --resume --quiet >"$tmp/r.log" 2>&1 ||
  fail "--resume: $(tail -3 "$tmp/r.log")"
cmp -s "$tmp/ia3/adapter_model.safetensors" "$tmp/ia3r/adapter_model.safetensors" ||
  fail "resumed IA3 adapter differs from the uninterrupted run's"

# Bad combinations.
expect_error "unknown type" "--peft-type 'adalora' cannot be trained: expected lora, ia3" \
  ft --out "$tmp/bad" --peft-type adalora
expect_error "LoRA flag with IA3" "--lora-r is a setting of --peft-type lora, but this run trains ia3" \
  ft --out "$tmp/bad" --peft-type ia3 --lora-r 4
expect_error "prompt flag with LoRA" \
  "--num-virtual-tokens is a setting of --peft-type prompt_tuning or p_tuning or prefix_tuning, but this run trains lora" \
  ft --out "$tmp/bad" --num-virtual-tokens 8
expect_error "packing with prompt tuning" "--packing cannot be used with --peft-type prompt_tuning" \
  ft --out "$tmp/bad" --peft-type prompt_tuning --packing
expect_error "init text missing" "--prompt-tuning-init text needs --prompt-tuning-init-text" \
  ft --out "$tmp/bad" --peft-type prompt_tuning --prompt-tuning-init text
expect_error "encoder size without projection" "--encoder-hidden-size with prefix_tuning sizes the --prefix-projection" \
  ft --out "$tmp/bad" --peft-type prefix_tuning --encoder-hidden-size 32
expect_error "bad adapter style" "--adapter-style" ft --out "$tmp/bad" --peft-type bottleneck --adapter-style foo
expect_error "bad non-linearity" "unknown non_linearity 'swoosh'" \
  ft --out "$tmp/bad" --peft-type bottleneck --non-linearity swoosh
expect_error "type differs from --adapter" "--peft-type p_tuning but --adapter .* holds a IA3 adapter" \
  ft --out "$tmp/bad" --peft-type p_tuning --adapter "$tmp/ia3"
expect_error "IA3 flag continuing an adapter" "--ia3-target-modules sets up a fresh adapter" \
  ft --out "$tmp/bad" --adapter "$tmp/ia3" --ia3-target-modules q_proj
expect_error "too many virtual tokens" "virtual tokens exceed the model's context \(max_position_embeddings 512\)" \
  ft --out "$tmp/bad" --peft-type prompt_tuning --num-virtual-tokens 480

expect_error "adapter flag with IA3" "--adapter-len is a setting of --peft-type adaption_prompt, but this run trains ia3" \
  ft --out "$tmp/bad" --peft-type ia3 --adapter-len 4
expect_error "no adapter layers" "--adapter-layers must be > 0" \
  ft --out "$tmp/bad" --peft-type adaption_prompt --adapter-layers 0
expect_error "too many adapter layers" "adapter_layers 9 exceeds the model's 8 layers" \
  ft --out "$tmp/bad" --peft-type adaption_prompt --adapter-layers 9

if [ $fails -ne 0 ]; then echo "$fails failure(s)"; exit 1; fi
echo "peft finetune tests passed"
