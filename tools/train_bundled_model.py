#!/usr/bin/env python3
"""Trains the bundled small Llama (models/qtune-tiny-8m) with a plain PyTorch loop on transformers' LlamaForCausalLM.

Why: qtune needs one real, trained HF checkpoint small enough to live in git (the demo, perplexity checks,
SFT examples). Step 2 of 2; step 1 (tools/train_bundled_tokenizer.py) wrote the tokenizer and the token
streams train.npy / val.npy ([BOS] doc [EOS] per document, uint16) into --carry.

Recipe: next-token cross-entropy on random windows of --seq tokens drawn from the train stream, bf16 autocast,
AdamW (betas 0.9/0.95, weight decay on matrices only), linear warmup then cosine decay to 10% of the peak LR,
gradient clipping at 1.0, dropout on the embedding output and on every residual branch (o_proj and down_proj
outputs, via forward hooks, so the saved model is a plain LlamaForCausalLM). The validation loss is measured
on consecutive non-overlapping --seq windows of val.npy every --eval-every steps; the weights with the best
validation loss are kept and saved (bf16 safetensors) with save_pretrained, with a generation_config.json.

Usage (GPU):  python3 tools/train_bundled_model.py --out /tmp/run   (defaults = the bundled model's recipe)
Smoke (CPU):  python3 tools/train_bundled_model.py --out /tmp/smoke --hidden 64 --layers 2 --intermediate 160
                  --steps 20 --batch 4 --seq 64 --eval-every 10
"""
import argparse
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM


def parse_args():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser()
    ap.add_argument("--carry", default=os.path.join(root, ".carry", "bundled"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=704)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--max-pos", type=int, default=512)
    ap.add_argument("--tied", action="store_true", help="tie lm_head to the embedding")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=1100)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--wd", type=float, default=0.2)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--time-budget", type=float, default=0.0, help="seconds; if > 0, fewer steps so it fits")
    ap.add_argument("--seed", type=int, default=1234)
    return ap.parse_args()


def add_dropout_hooks(model, p):
    """Dropout on the embedding output and on each residual branch output (GPT-2 style)."""
    def hook(module, inputs, output):
        return F.dropout(output, p=p, training=module.training)
    handles = [model.model.embed_tokens.register_forward_hook(hook)]
    for layer in model.model.layers:
        handles.append(layer.self_attn.o_proj.register_forward_hook(hook))
        handles.append(layer.mlp.down_proj.register_forward_hook(hook))
    return handles


def lr_at(step, args, total):
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    t = min(1.0, (step - args.warmup) / max(1, total - args.warmup))
    return args.lr * (args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))


@torch.no_grad()
def eval_loss(model, windows, batch, dev, amp):
    """Mean next-token loss over windows [W, seq+1] (token-weighted)."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, windows.shape[0], batch):
        w = windows[i:i + batch].to(dev)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(input_ids=w[:, :-1]).logits  # [B, T, V]
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1), reduction="sum")
        total += loss.item()
        count += w[:, 1:].numel()
    model.train()
    return total / count


def main():
    args = parse_args()
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = dev.type == "cuda"
    os.makedirs(args.out, exist_ok=True)
    log = open(os.path.join(args.out, "train_log.txt"), "w")

    def say(msg):
        print(msg, flush=True)
        log.write(msg + "\n")
        log.flush()

    train = torch.from_numpy(np.load(os.path.join(args.carry, "train.npy")).astype(np.int64))
    val = torch.from_numpy(np.load(os.path.join(args.carry, "val.npy")).astype(np.int64))
    n_val_win = (val.numel() - 1) // args.seq
    val_windows = torch.stack([val[i * args.seq:i * args.seq + args.seq + 1] for i in range(n_val_win)])
    # Unigram baseline: cross-entropy of val under train token frequencies (add-one smoothed).
    counts = torch.bincount(train, minlength=args.vocab).double() + 1
    logp = (counts / counts.sum()).log()
    unigram = -logp[val_windows[:, 1:].reshape(-1)].mean().item()
    say(f"device {torch.cuda.get_device_name() if amp else 'cpu'}  torch {torch.__version__}")
    say(f"train tokens {train.numel()}  val windows {n_val_win} x {args.seq}  unigram val loss {unigram:.4f}")

    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.kv_heads, max_position_embeddings=args.max_pos,
                         rms_norm_eps=1e-5, rope_theta=10000.0, hidden_act="silu", initializer_range=0.02,
                         tie_word_embeddings=args.tied, bos_token_id=0, eos_token_id=1, pad_token_id=2,
                         attention_bias=False, mlp_bias=False)
    model = LlamaForCausalLM(config).to(dev)
    model.config._attn_implementation = "sdpa"
    n_params = sum(p.numel() for p in model.parameters())
    say(f"params {n_params}  config {json.dumps(vars(args))}")
    add_dropout_hooks(model, args.dropout)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=amp)
    train_dev = train.to(dev)
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    offsets = torch.arange(args.seq + 1, device=dev)

    total = args.steps
    best = (float("inf"), -1)
    best_state = None
    t0 = time.time()
    recent = []
    step = 0
    while step < total:
        lr = lr_at(step, args, total)
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, train_dev.numel() - args.seq - 1, (args.batch,), device=dev, generator=gen)
        w = train_dev[starts[:, None] + offsets[None, :]]  # [B, T+1]
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(input_ids=w[:, :-1]).logits  # [B, T, V]
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        recent.append(loss.detach())
        step += 1
        if step == 50 and args.time_budget > 0:
            if amp:
                torch.cuda.synchronize()
            per_step = (time.time() - t0) / 50
            fit = int(args.time_budget / (per_step * 1.08))  # ~8% for evaluations
            if fit < total:
                say(f"time budget {args.time_budget}s at {per_step * 1000:.1f} ms/step: steps {total} -> {fit}")
                total = max(fit, 100)
        if step % args.eval_every == 0 or step == total:
            vl = eval_loss(model, val_windows, 64, dev, amp)
            tl = torch.stack(recent).mean().item()
            recent = []
            if vl < best[0]:
                best = (vl, step)
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            say(f"step {step:5d}/{total}  lr {lr:.2e}  train {tl:.4f}  val {vl:.4f}  best {best[0]:.4f}@{best[1]}"
                f"  {time.time() - t0:.0f}s")
    wall = time.time() - t0

    model.load_state_dict(best_state)
    # Train loss of the kept weights, measured like val on 64 fixed windows of the train stream (no dropout).
    g2 = torch.Generator().manual_seed(7)
    st = torch.randint(0, train.numel() - args.seq - 1, (64,), generator=g2)
    train_windows = torch.stack([train[s:s + args.seq + 1] for s in st.tolist()])
    tl_eval = eval_loss(model, train_windows, 64, dev, amp)
    model = model.to(torch.bfloat16)
    model.generation_config = GenerationConfig(bos_token_id=0, eos_token_id=1, pad_token_id=2)
    model.save_pretrained(args.out)
    summary = {"best_val_loss": best[0], "best_step": best[1], "steps": total, "train_loss_eval_at_best": tl_eval,
               "unigram_val_loss": unigram, "wall_s": wall, "params": n_params,
               "device": torch.cuda.get_device_name() if amp else "cpu", "args": vars(args)}
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    say(json.dumps(summary))


if __name__ == "__main__":
    main()
