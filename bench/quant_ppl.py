#!/usr/bin/env python3
"""Quantization error on the bundled model: held-out perplexity of models/qtune-tiny-8m in bf16 (f32 compute)
vs NF4, NF4 + double quant, FP4 (4-bit, block size 64, compute dtype float32) and LLM.int8 (threshold 6.0),
measured by transformers + bitsandbytes (CPU) and by qtune, side by side.

Protocol (qtune perplexity uses the same): ids = tokenizer(heldout.txt) with BOS; non-overlapping windows of
512 tokens (the model's context; stride 512), each its own sequence from position 0; mean NLL of tokens
1..len-1 of each window; perplexity = exp(mean NLL).

For each quantized setting the script:
  1. loads the bf16 checkpoint in transformers with dtype=float32 and BitsAndBytesConfig(...) on the CPU
     (bitsandbytes' portable dequantize + torch matmul path: the AVX512-BF16 repacking is switched off, as in
     tools/make_quant_model_fixtures.py), computes the perplexity and saves the folder (save_pretrained);
  2. runs `qtune perplexity` on the bf16 checkpoint quantizing while loading (--load-in-4bit / --load-in-8bit);
     qtune quantizes the bf16 tensors directly (quant_state dtype bfloat16), transformers the float32 upcast
     (same codes and absmax, dequantized values not rounded to bf16), hence tiny differences;
  3. runs `qtune perplexity` on the folder transformers saved (the same stored tensors as in 1).

Usage: python3 bench/quant_ppl.py --qtune build/qtune [--work /tmp/quant_ppl] [--max-tokens N] > table.md
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.join(HERE, "..", "models", "qtune-tiny-8m")
TEXT = os.path.join(MODEL, "heldout.txt")
CTX = 512

SETTINGS = [
    ("bf16 weights, f32 compute", None, []),
    ("NF4", dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32),
     ["--load-in-4bit", "--bnb-4bit-quant-type", "nf4"]),
    ("NF4 + double quant", dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.float32), ["--load-in-4bit", "--bnb-4bit-quant-type", "nf4", "--bnb-4bit-use-double-quant"]),
    ("FP4", dict(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_compute_dtype=torch.float32),
     ["--load-in-4bit", "--bnb-4bit-quant-type", "fp4"]),
    ("LLM.int8 (threshold 6)", dict(load_in_8bit=True), ["--load-in-8bit"]),
]


def hf_ppl(model, ids):
    nll, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(ids), CTX):
            chunk = torch.tensor(ids[i:i + CTX])[None]  # [1, T]
            if chunk.shape[1] < 2:
                break
            logits = model(input_ids=chunk).logits[0, :-1].float()  # [T-1, V]
            nll += F.cross_entropy(logits, chunk[0, 1:], reduction="sum").item()
            n += chunk.shape[1] - 1
    return math.exp(nll / n), n


def qtune_ppl(qtune, model_dir, args, max_tokens):
    cmd = [qtune, "perplexity", "--model", model_dir, "--file", TEXT, "--json"] + args
    if max_tokens:
        cmd += ["--max-tokens", str(max_tokens)]
    r = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qtune", required=True)
    ap.add_argument("--work", default="/tmp/quant_ppl")
    ap.add_argument("--max-tokens", type=int, default=0)
    a = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(MODEL)
    ids = tok(open(TEXT, encoding="utf-8").read())["input_ids"]
    if a.max_tokens:
        ids = ids[:a.max_tokens]
    rows = []
    for name, qkw, qargs in SETTINGS:
        t0 = time.time()
        kw = {"quantization_config": BitsAndBytesConfig(**qkw)} if qkw else {}
        model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32, device_map="cpu", **kw)
        for m in model.modules():
            if hasattr(m, "support_avx512bf16_for_cpu"):
                m.support_avx512bf16_for_cpu = False
        hf, n = hf_ppl(model, ids)
        saved = None
        if qkw:
            saved = os.path.join(a.work, name.split()[0].replace(".", "") + ("_dq" if "double" in name else ""))
            model.save_pretrained(saved)
            tok.save_pretrained(saved)
        q_load = qtune_ppl(a.qtune, MODEL, qargs, a.max_tokens)
        q_saved = qtune_ppl(a.qtune, saved, [], a.max_tokens) if saved else None
        rows.append((name, hf, q_load["perplexity"], q_saved["perplexity"] if q_saved else None, n, q_load["scored"]))
        print(f"{name}: transformers {hf:.4f}, qtune {q_load['perplexity']:.4f}, qtune on bnb folder "
              f"{q_saved['perplexity'] if q_saved else '-'} ({time.time() - t0:.0f} s)", file=sys.stderr)
    base = rows[0][1]
    print("| setting | transformers + bnb | qtune (quantized while loading) | qtune (folder saved by transformers) "
          "| Δ ppl vs bf16 (transformers) |")
    print("|---|---|---|---|---|")
    for name, hf, ql, qs, n, scored in rows:
        print(f"| {name} | {hf:.4f} | {ql:.4f} | {qs:.4f} | {hf - base:+.4f} |" if qs is not None else
              f"| {name} | {hf:.4f} | {ql:.4f} | — | {hf - base:+.4f} |")
    print(f"\n{rows[0][4]} scored tokens (transformers), {rows[0][5]} (qtune).")


if __name__ == "__main__":
    main()
