"""Table for bench/qlora_e2e.sh: HF rows from hf_*.json, qtune rows from each run's training_log.csv (steps after
the first two) and the GPU peak of its log's "done:" line. Also the fraction of the arithmetic floor at the 790
TFLOP/s bf16 rate measured on the H200: per token, the frozen linear layers cost 2P FLOP in the forward, 2P in
the backward (d(input) only: frozen weights get no gradient) and 2P more for the recomputed forward with
checkpointing; causal attention 2·T·hidden per layer forward, 2.5x that backward, once more when recomputed."""
import csv
import json
import os
import re
import sys

PARAMS, LAYERS, HIDDEN, SEQ, PEAK_FLOPS = 8.03e9, 32, 4096, 2048, 790e12


def floor_tok_s(checkpointing):
    attn = 2 * SEQ * HIDDEN * LAYERS  # causal QKᵀ and PV per token, forward
    passes = 3 if checkpointing else 2  # linear: forward, backward d(input), recomputed forward
    per_token = passes * 2 * PARAMS + attn * (1 + 2.5 + (1 if checkpointing else 0))
    return PEAK_FLOPS / per_token


def qtune_row(d, name):
    rows = list(csv.DictReader(open(os.path.join(d, name, "training_log.csv"))))[2:]
    tok = sum(float(r["tokens_per_s"]) for r in rows) / max(1, len(rows))
    log = open(os.path.join(d, name + ".log")).read()
    m = re.search(r"GPU peak (\d+) MiB", log)
    return tok, (int(m.group(1)) / 1024 if m else float("nan"))


def main():
    d = sys.argv[1]
    print("| stack | mode | checkpointing | tokens/s | peak GPU memory | share of arithmetic floor |")
    print("|---|---|---|---|---|---|")
    for mode in ["qlora", "lora"]:
        hf = json.loads(open(os.path.join(d, f"hf_{mode}.json")).read().strip().splitlines()[-1])
        print(f"| transformers+peft{'+bitsandbytes' if mode == 'qlora' else ''} | {mode} | on | "
              f"{hf['tokens_per_s']:,.0f} | {hf['peak_gib']:.1f} GiB | {hf['tokens_per_s'] / floor_tok_s(True):.0%} |")
        tok, gib = qtune_row(d, f"qtune_{mode}")
        print(f"| qtune | {mode} | on | {tok:,.0f} ({tok / hf['tokens_per_s']:.2f}x) | {gib:.1f} GiB | "
              f"{tok / floor_tok_s(True):.0%} |")


if __name__ == "__main__":
    main()
