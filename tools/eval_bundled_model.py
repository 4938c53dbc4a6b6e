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

With --fixture DIR it also writes qtune's test fixture for the bundled model: expected.safetensors (ids I32
[1, 32]: the first 32 tokens of heldout.txt with BOS; logits F32 [1, 32, V] from transformers in float32) and
expected.json (prompt = "ROMEO:\n" with BOS, max_new_tokens 40, greedy new ids, smallest top-2 logit margin on
the greedy path, eos_token_id, and the encoded ids of a few strings for tokenizer checks).

Usage: python3 tools/eval_bundled_model.py [--model models/qtune-tiny-8m] [--fixture tests/fixtures/qtune-tiny-8m]
"""
import argparse
import json
import math
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = ["ROMEO:\n", "First Citizen:\nWe are", "The history of the", "Once upon a time"]


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(root, "models", "qtune-tiny-8m"))
    ap.add_argument("--fixture", default="")
    args = ap.parse_args()
    d = args.model
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
    if args.fixture:
        write_fixture(args.fixture, tok, model, ids)


def write_fixture(out_dir, tok, model, heldout_ids):
    os.makedirs(out_dir, exist_ok=True)
    ids = torch.tensor([heldout_ids[:32]])  # [1, 32]
    with torch.no_grad():
        logits = model(input_ids=ids).logits  # [1, 32, V]
        prompt = tok("ROMEO:\n")["input_ids"]
        out = model.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False, output_scores=True,
                             return_dict_in_generate=True)
    greedy = out.sequences[0, len(prompt):].tolist()
    margins = [float(v[0] - v[1]) for v in (sc[0].topk(2).values for sc in out.scores)]
    save_file({"ids": ids.to(torch.int32), "logits": logits.float().contiguous()},
              os.path.join(out_dir, "expected.safetensors"))
    strings = ["Hello world", "ROMEO:\nWhat light through yonder window breaks?", "In 1987, the caf\u00e9's 12345 users"]
    with open(os.path.join(out_dir, "expected.json"), "w") as f:
        json.dump({"note": "made by tools/eval_bundled_model.py from models/qtune-tiny-8m (transformers, float32)",
                   "prompt_text": "ROMEO:\n", "prompt": prompt, "max_new_tokens": 40, "greedy": greedy,
                   "greedy_text": tok.decode(greedy), "greedy_min_margin": min(margins), "eos_token_id": 1,
                   "encodings": [{"text": t, "ids": tok(t)["input_ids"]} for t in strings]}, f, indent=1)
    print(f"fixture written to {out_dir}; greedy min margin {min(margins):.4f}")


if __name__ == "__main__":
    main()
