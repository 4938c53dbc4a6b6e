#!/usr/bin/env python3
"""Reference numbers for the bundled model with transformers: held-out perplexity and sample generations.

Why: qtune's own perplexity and generate commands are checked against these numbers (models/README.md
records them). Perplexity protocol (the C++ side must follow the same one to compare):
  ids = tokenizer(heldout.txt text)["input_ids"]          (BOS first, no EOS)
  chunks = ids[0:512], ids[512:1024], ...                   (non-overlapping, the last one shorter; each chunk
                                                              is its own sequence, positions from 0, no cache)
  nll = sum over chunks of the cross-entropy of tokens 1..len-1 given the ones before, in float32
  ppl = exp(nll / number of predicted tokens)
Generations: prompts encoded with BOS; greedy (do_sample=False) and sampled (torch.manual_seed(0),
temperature 0.8, top_k 50), max_new_tokens 60, weights upcast to float32, CPU.

Usage: python3 tools/eval_bundled_model.py [models/qtune-tiny-8m]
"""
import math
import os
import sys

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = ["ROMEO:\n", "First Citizen:\nWe are", "The history of the", "Once upon a time"]


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    d = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "models", "qtune-tiny-8m")
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    text = open(os.path.join(d, "heldout.txt"), encoding="utf-8").read()
    ids = tok(text)["input_ids"]
    nll, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(ids), 512):
            chunk = torch.tensor(ids[i:i + 512])[None]  # [1, T]
            if chunk.shape[1] < 2:
                continue
            logits = model(input_ids=chunk).logits[0, :-1]  # [T-1, V]
            nll += F.cross_entropy(logits, chunk[0, 1:], reduction="sum").item()
            n += chunk.shape[1] - 1
    print(f"heldout.txt: {len(text)} chars, {len(ids)} tokens, {n} predicted; "
          f"mean nll {nll / n:.4f} nats/token, perplexity {math.exp(nll / n):.2f}, "
          f"{nll / math.log(2) / len(text.encode('utf-8')):.4f} bits/byte")
    for p in PROMPTS:
        enc = tok(p, return_tensors="pt")
        g = model.generate(**enc, max_new_tokens=60, do_sample=False)
        print(f"--- greedy {p!r}\n{tok.decode(g[0], skip_special_tokens=True)}")
        torch.manual_seed(0)
        g = model.generate(**enc, max_new_tokens=60, do_sample=True, temperature=0.8, top_k=50)
        print(f"--- sampled (seed 0, T 0.8, top_k 50) {p!r}\n{tok.decode(g[0], skip_special_tokens=True)}")


if __name__ == "__main__":
    main()
